//! A minimal DNS responder and client for traffic tests: the responder echoes each query
//! back with QR=1, over UDP and TCP; every wait is bounded by a timeout.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

const TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

/// Answers queries on `addrs` until dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Turns a query into its answer: same bytes, QR set.
fn answer(query: &mut [u8]) {
    if query.len() > 2 {
        query[2] |= 0x80;
    }
}

impl Responder {
    /// Answers on the server side of a `Pair`: 198.18.0.1 and 2001:2::1, port 53.
    pub fn serve(server: &crate::netns::Netns) -> anyhow::Result<Self> {
        Self::serve_at_most(server, None)
    }

    /// Like `serve`, but a server that answers at most `capacity` UDP queries per second
    /// per address, from a deep receive queue: beyond its capacity, queries wait longer
    /// and longer (then overflow), as they do when a real server saturates.
    pub fn serve_at_most(
        server: &crate::netns::Netns,
        capacity: Option<u32>,
    ) -> anyhow::Result<Self> {
        let addrs: Vec<SocketAddr> = [crate::netns::SERVER_V4, crate::netns::SERVER_V6]
            .iter()
            .map(|ip| SocketAddr::new(ip.parse().expect("an address"), 53))
            .collect();
        server.run(move || Self::bind(&addrs, capacity))?
    }

    /// Binds UDP and TCP port 53 on each address. Call from inside the server namespace
    /// (the sockets stay there; the serving threads need not).
    pub fn bind(addrs: &[SocketAddr], capacity: Option<u32>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let udp = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
            udp.set_read_timeout(Some(POLL))?;
            let batch = match capacity {
                Some(capacity) => {
                    // As root: beyond net.core.rmem_max.
                    set_option(
                        &udp,
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        LIMITED_RECEIVE_BUFFER,
                    )
                    .context("SO_RCVBUFFORCE")?;
                    Some((capacity / TICKS_PER_SECOND).max(1))
                }
                None => None,
            };
            let tcp = TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
            tcp.set_nonblocking(true)?;
            let stop_udp = stop.clone();
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop_udp.load(Ordering::Relaxed) {
                    let Some(batch) = batch else {
                        if let Ok((len, peer)) = udp.recv_from(&mut buf) {
                            answer(&mut buf[..len]);
                            let _ = udp.send_to(&buf[..len], peer);
                        }
                        continue;
                    };
                    // Capacity-limited: at most `batch` queries per tick, in whatever
                    // order the socket queued them (an idle tick banks no credit).
                    let tick = Instant::now() + Duration::from_secs(1) / TICKS_PER_SECOND;
                    for _ in 0..batch {
                        let Ok((len, peer)) = udp.recv_from(&mut buf) else {
                            break;
                        };
                        answer(&mut buf[..len]);
                        let _ = udp.send_to(&buf[..len], peer);
                    }
                    thread::sleep(tick.saturating_duration_since(Instant::now()));
                }
            }));
            let stop_tcp = stop.clone();
            threads.push(thread::spawn(move || {
                while !stop_tcp.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((stream, _)) => {
                            let _ = serve_tcp(stream);
                        }
                        Err(_) => thread::sleep(POLL / 5),
                    }
                }
            }));
        }
        Ok(Self { stop, threads })
    }
}

/// A capacity-limited responder works in ticks: 100 a second, a batch each, as a server
/// reading with recvmmsg would. Serving one query every 1/capacity instead would let
/// a trickle of queries in between the bursts a paced flood generator sends.
const TICKS_PER_SECOND: u32 = 100;

/// Receive buffer of a capacity-limited responder (the kernel doubles it): thousands of
/// queries, seconds of work at the capacities tests use.
const LIMITED_RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// Sets an integer socket option.
fn set_option(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket, an int option and its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn serve_tcp(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return Ok(()); // closed by the client
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut message)?;
        answer(&mut message);
        stream.write_all(&len)?;
        stream.write_all(&message)?;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A DNS client: where it sends from, how long it waits, whether IPv4 may fragment.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// Source address of UDP queries (one of this namespace's); the kernel picks when `None`.
    pub source: Option<std::net::IpAddr>,
    /// How long to wait to connect and for an answer.
    pub timeout: Duration,
    /// Let IPv4 fragment a query larger than the MTU (no DF bit).
    pub fragment: bool,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            source: None,
            timeout: TIMEOUT,
            fragment: false,
        }
    }
}

impl Client {
    /// Sends `query` over UDP from a fresh socket and waits for the answer with its ID.
    pub fn udp(&self, server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
        let local = match self.source {
            Some(addr) => SocketAddr::new(addr, 0),
            None if server.is_ipv4() => "0.0.0.0:0".parse()?,
            None => "[::]:0".parse()?,
        };
        let socket = UdpSocket::bind(local)?;
        if self.fragment && server.is_ipv4() {
            set_option(
                &socket,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
            .context("IP_MTU_DISCOVER")?;
        }
        socket.set_read_timeout(Some(self.timeout))?;
        socket.send_to(query, server)?;
        let mut buf = vec![0u8; 65536];
        let len = socket.recv(&mut buf).context("no UDP answer")?;
        buf.truncate(len);
        anyhow::ensure!(buf[..2] == query[..2], "answer with another ID");
        Ok(buf)
    }

    /// Sends `query` over a new TCP connection (length-prefixed) and reads the answer.
    pub fn tcp(&self, server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            self.source.is_none(),
            "TCP queries go from the kernel's source address"
        );
        let mut stream = TcpStream::connect_timeout(&server, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        let mut message = (query.len() as u16).to_be_bytes().to_vec();
        message.extend_from_slice(query);
        stream.write_all(&message)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer)?;
        anyhow::ensure!(answer[..2] == query[..2], "answer with another ID");
        Ok(answer)
    }
}

/// Sends `count` queries from `source` (an address of this namespace) to `server`, one
/// every `spacing`, then collects answers until none comes for a while. Returns the
/// answers received and the time from the first send to the last.
pub fn udp_flood(
    source: std::net::IpAddr,
    server: SocketAddr,
    count: u16,
    spacing: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0))?;
    let started = std::time::Instant::now();
    for id in 0..count {
        socket.send_to(&crate::packet::dns_query(id, "example.com"), server)?;
        thread::sleep(spacing);
    }
    let sending = started.elapsed();
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 512];
    let mut answers = 0;
    while answers < usize::from(count) && socket.recv(&mut buf).is_ok() {
        answers += 1;
    }
    Ok((answers, sending))
}
