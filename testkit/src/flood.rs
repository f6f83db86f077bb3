//! A flood generator for the lab and the end-to-end benchmark: BPF_PROG_TEST_RUN in
//! live-frames mode. The kernel runs a tiny XDP program (dns-xdp-test-ebpf) on copies of
//! a DNS query frame; the program picks a (spoofed) source address and returns `XDP_TX`,
//! and the kernel transmits each frame out of a veth in the sender's namespace, so it
//! arrives at the peer (the server) as if a NIC had received it. No socket, no skb on
//! the sending side: millions of frames per second per CPU when nothing downstream is
//! the bottleneck.
//!
//! Some kernels refuse live frames (EPERM: seen on a 6.18 guest kernel, for every
//! program, in every namespace, with every capability but CAP_SYS_RESOURCE). There the
//! same frames, their sources picked the same way, go out through a packet socket in
//! batches (`sendmmsg`): slower, but the same flood.
//!
//! On veth, frames sent this way (`ndo_xdp_xmit`) are dropped unless the receiving end
//! runs NAPI: an XDP program attached there (dns-xdp) or GRO enabled on it
//! (`ethtool -K <dev> gro on`).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};

use crate::packet::{dns_query, internet_checksum};

/// The kinds of flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Four sources (the base address with last octet 1 to 4), each far above any
    /// per-source limit.
    Concentrated,
    /// Up to 65 536 spoofed sources (the base address's /16, low 16 bits random).
    Spoofed,
    /// Spoofed sources from the whole IPv4 unicast space (`random_source`: no 0/8,
    /// 127/8, 224/3, nor the destination's /24; the base address is not used), so no
    /// prefix of any length concentrates it.
    Random,
}

impl Kind {
    fn program(self) -> &'static str {
        match self {
            Kind::Concentrated => "flood_few",
            Kind::Spoofed => "flood_spoofed",
            Kind::Random => "flood_random",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Concentrated => "concentrated",
            Kind::Spoofed => "spoofed",
            Kind::Random => "random",
        }
    }
}

/// Where and what to send.
#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: Kind,
    /// Namespace holding the sending interface (`/var/run/netns/<name>`).
    pub netns: String,
    /// The sending interface (a veth whose peer is the target).
    pub iface: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Source address the program varies (its /16 or its last octet; unused by
    /// `Kind::Random`, whose sources are the whole unicast space).
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The name asked for.
    pub qname: String,
    /// Frames per second in total; `None`: as fast as possible.
    pub rate: Option<u64>,
    /// Sending threads (one per CPU at most is useful).
    pub threads: usize,
}

impl Spec {
    /// A flood of `kind` from `client` to `server` over the veth between them (`LINK`),
    /// spoofing sources of `src`'s /16 (`Kind::Spoofed`), asking for `qname`, at `rate`
    /// frames per second (`None`: as fast as it goes) from one thread.
    pub fn across(
        client: &crate::netns::Netns,
        server: &crate::netns::Netns,
        kind: Kind,
        src: Ipv4Addr,
        qname: &str,
        rate: Option<u64>,
    ) -> anyhow::Result<Self> {
        use crate::netns::{LINK, SERVER_V4};
        Ok(Self {
            kind,
            netns: client.name().to_owned(),
            iface: LINK.to_owned(),
            src_mac: mac_of(client.name(), LINK)?,
            dst_mac: mac_of(server.name(), LINK)?,
            src,
            dst: SERVER_V4.parse()?,
            qname: qname.to_owned(),
            rate,
            threads: 1,
        })
    }
}

/// The frame every run starts from: Ethernet, IPv4 (no options), UDP to port 53 with a
/// zero checksum (valid for IPv4, so the program need not fix it), a DNS query.
pub fn template(spec: &Spec) -> Vec<u8> {
    let payload = dns_query(0x4242, &spec.qname);
    let udp_len = 8 + payload.len();
    let mut frame = Vec::with_capacity(14 + 20 + udp_len);
    frame.extend(spec.dst_mac);
    frame.extend(spec.src_mac);
    frame.extend(0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + udp_len) as u16).to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(spec.src.octets());
    ip.extend(spec.dst.octets());
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend(ip);
    frame.extend(40000u16.to_be_bytes());
    frame.extend(53u16.to_be_bytes());
    frame.extend((udp_len as u16).to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

/// A running flood; stops (and joins its threads) on `stop` or drop.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Frames sent (the program returned `XDP_TX`, or the packet socket took them).
    pub sent: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Frames per kernel call when sending as fast as possible (the kernel stops early on a
/// signal or when the CPU is needed elsewhere, and the call is simply repeated).
const MAX_CALL: u32 = 1 << 18;
/// Frames per batch inside the kernel (its limit is 256).
const BATCH: u32 = 64;
/// Pacing interval for fixed rates.
const SLICE: Duration = Duration::from_millis(1);

impl Flood {
    /// Loads the program once per thread and starts sending.
    pub fn start(spec: &Spec) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let frame = Arc::new(template(spec));
        let threads = spec.threads.max(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for index in 0..threads {
            let share = spec.rate.map(|rate| {
                rate / threads as u64 + u64::from((index as u64) < rate % threads as u64)
            });
            let (spec, stop, sent, frame, ready) = (
                spec.clone(),
                stop.clone(),
                sent.clone(),
                frame.clone(),
                ready_tx.clone(),
            );
            handles.push(thread::spawn(move || {
                let setup = prepare(&spec, index);
                let program = match setup {
                    Ok(program) => {
                        let _ = ready.send(Ok(()));
                        program
                    }
                    Err(error) => {
                        let _ = ready.send(Err(format!("{error:#}")));
                        return Err(error);
                    }
                };
                send(&program, &frame, share, &stop, &sent)
            }));
        }
        let mut flood = Self {
            stop,
            sent,
            started: Instant::now(),
            threads: handles,
        };
        for _ in 0..threads {
            match ready_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    flood.halt();
                    bail!("flood generator: {error}");
                }
                Err(_) => {
                    flood.halt();
                    bail!("flood generator: a thread did not start within 20 s");
                }
            }
        }
        flood.started = Instant::now();
        flood.sent.store(0, Ordering::Relaxed);
        Ok(flood)
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn halt(&mut self) -> Vec<anyhow::Result<()>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("flood thread panicked")))
            })
            .collect()
    }

    /// Stops sending; fails if a thread failed.
    pub fn stop(mut self) -> anyhow::Result<Report> {
        let results = self.halt();
        let report = Report {
            sent: self.sent(),
            elapsed: self.started.elapsed(),
        };
        for result in results {
            result?;
        }
        Ok(report)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Pins the calling thread to CPU `index` (modulo the CPUs there are).
pub fn pin_to_cpu(index: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        libc::CPU_SET(index % cpus, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins this thread to CPU `index`, joins the namespace and loads the program.
fn prepare(spec: &Spec, index: usize) -> anyhow::Result<Loaded> {
    pin_to_cpu(index);
    let netns = File::open(format!("/var/run/netns/{}", spec.netns))
        .with_context(|| format!("opening namespace {}", spec.netns))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    let name = std::ffi::CString::new(spec.iface.as_str())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {} in {}", spec.iface, spec.netns);
    }
    let name = spec.kind.program();
    let ebpf = crate::test_programs::load(name)?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex. data_end must be the frame's length.
    let frame_len = template(spec).len() as u32;
    let context: Vec<u8> = [0, frame_len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|word: &u32| word.to_ne_bytes())
        .collect();
    Ok(Loaded {
        ebpf,
        name,
        context,
        ifindex,
        kind: spec.kind,
    })
}

/// A thread's own copy of the object with its program loaded, and the run context.
struct Loaded {
    ebpf: aya::Ebpf,
    name: &'static str,
    context: Vec<u8>,
    ifindex: u32,
    kind: Kind,
}

fn run(program: &Xdp, frame: &[u8], context: &[u8], count: u32) -> Result<(), ProgramError> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.ctx_in = Some(context);
    options.repeat = count;
    options.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
    program.test_run(options).map(|_| ())
}

/// The kernel refuses live frames outright (not a failure of one call).
fn live_frames_refused(error: &ProgramError) -> bool {
    matches!(error, ProgramError::SyscallError(error)
        if error.io_error.raw_os_error() == Some(libc::EPERM))
}

/// Frames per `sendmmsg` call of the packet-socket sender.
const SOCKET_BATCH: usize = 64;

/// The fallback sender: a packet socket on the interface, the frame copied into a batch
/// whose sources are picked as the XDP programs pick them.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    kind: Kind,
    batch: Vec<Vec<u8>>,
    random: u64,
}

impl PacketSocket {
    /// A packet socket bound to `ifindex` (in the calling thread's namespace), sending
    /// only (protocol 0: it receives nothing), past the qdisc.
    fn open(ifindex: u32, kind: Kind, frame: &[u8]) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket call; the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_ll is valid; its length is passed.
        let bound = unsafe {
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = ifindex as i32;
            libc::bind(
                raw,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound != 0 {
            bail!(
                "binding the packet socket: {}",
                std::io::Error::last_os_error()
            );
        }
        let bypass: libc::c_int = 1;
        // SAFETY: an int option, its size passed. Best effort: without it frames go
        // through the qdisc, a little slower.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const bypass).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let seed = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |since| since.as_nanos() as u64)
            ^ u64::from(ifindex) << 32;
        Ok(Self {
            fd,
            kind,
            batch: vec![frame.to_vec(); SOCKET_BATCH],
            random: seed | 1,
        })
    }

    /// Sends up to `count` frames, each with a new source; returns how many went out.
    fn send(&mut self, count: u32, stop: &AtomicBool) -> anyhow::Result<u32> {
        let mut done = 0u32;
        while done < count && !stop.load(Ordering::Relaxed) {
            let frames = (count - done).min(SOCKET_BATCH as u32) as usize;
            for frame in &mut self.batch[..frames] {
                // xorshift64: any fast generator will do for spoofed sources.
                self.random ^= self.random << 13;
                self.random ^= self.random >> 7;
                self.random ^= self.random << 17;
                spoof(frame, self.kind, self.random);
            }
            let mut iovecs: Vec<libc::iovec> = self.batch[..frames]
                .iter_mut()
                .map(|frame| libc::iovec {
                    iov_base: frame.as_mut_ptr().cast(),
                    iov_len: frame.len(),
                })
                .collect();
            let mut messages: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .map(|iovec| {
                    // SAFETY: a zeroed msghdr is valid (no address, no control data).
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_iov = iovec;
                    header.msg_hdr.msg_iovlen = 1;
                    header
                })
                .collect();
            // SAFETY: `messages` points into `iovecs` and `self.batch`, alive for the call.
            let sent = unsafe {
                libc::sendmmsg(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    messages.as_mut_ptr(),
                    frames as u32,
                    0,
                )
            };
            if sent < 0 {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    // The device queue is full: give it a moment.
                    Some(libc::ENOBUFS | libc::EAGAIN) => thread::yield_now(),
                    _ => bail!("sending on the packet socket: {error}"),
                }
            } else {
                done += sent as u32;
            }
        }
        Ok(done)
    }
}

/// Sets the source of `frame` (the `template`'s layout) as the XDP flood programs do:
/// any address of the base's /16 (`Spoofed`), last octet 1 to 4 (`Concentrated`) or
/// any unicast address outside the destination's /24 (`Random`, `random_source`), a
/// random source port of 1024 or more, the IPv4 checksum recomputed.
fn spoof(frame: &mut [u8], kind: Kind, random: u64) {
    let (low, high) = (random as u32, (random >> 32) as u32);
    let port = match kind {
        Kind::Spoofed => {
            frame[28..30].copy_from_slice(&(low as u16).to_be_bytes());
            (low >> 16) as u16
        }
        Kind::Concentrated => {
            frame[29] = (low & 3) as u8 + 1;
            (low >> 16) as u16
        }
        Kind::Random => {
            let destination = [frame[30], frame[31], frame[32]];
            frame[26..30].copy_from_slice(&random_source(low, high, destination));
            high as u16
        }
    };
    frame[34..36].copy_from_slice(&(port | 1024).to_be_bytes());
    frame[24..26].fill(0);
    let checksum = internet_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
}

/// A source of the random flood from two random words, as `flood_random` (the XDP
/// program) picks it: the first octet uniform over 1–126 and 128–223 (`high`,
/// multiply-shift), the other three `low`'s low bytes; an address inside `avoid` (the
/// first three octets of the server's /24) has its third octet's low bit flipped.
pub fn random_source(low: u32, high: u32, avoid: [u8; 3]) -> [u8; 4] {
    let mut first = 1 + ((u64::from(high) * 222) >> 32) as u8;
    if first >= 127 {
        first += 1;
    }
    let mut octets = [first, low as u8, (low >> 8) as u8, (low >> 16) as u8];
    if octets[..3] == avoid {
        octets[2] ^= 1;
    }
    octets
}

fn send(
    loaded: &Loaded,
    frame: &[u8],
    rate: Option<u64>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done: u64 = 0;
    let (mut calls, mut sleeps, mut in_calls) = (0u64, 0u64, Duration::ZERO);
    let mut socket: Option<PacketSocket> = None;
    while !stop.load(Ordering::Relaxed) {
        let count = match rate {
            None => MAX_CALL,
            Some(0) => {
                thread::sleep(SLICE);
                continue;
            }
            Some(rate) => {
                // Catch up with the schedule, at most 250 ms of it at once (each call
                // costs tens of milliseconds on its own: the kernel sets up and tears
                // down a page pool per call).
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let owed = due.saturating_sub(done).min(rate / 4 + 1);
                if owed == 0 {
                    sleeps += 1;
                    thread::sleep(SLICE);
                    continue;
                }
                owed as u32
            }
        };
        let call = Instant::now();
        let count = match &mut socket {
            Some(socket) => socket.send(count, stop)?,
            None => {
                let program: &Xdp = loaded
                    .ebpf
                    .program(loaded.name)
                    .context("program vanished")?
                    .try_into()?;
                match run(program, frame, &loaded.context, count) {
                    Ok(()) => count,
                    Err(error) if calls == 0 && live_frames_refused(&error) => {
                        socket = Some(PacketSocket::open(loaded.ifindex, loaded.kind, frame)?);
                        continue;
                    }
                    Err(error) => {
                        return Err(error)
                            .context("BPF_PROG_TEST_RUN with live frames (kernel 5.18 or later)");
                    }
                }
            }
        };
        in_calls += call.elapsed();
        calls += 1;
        done += u64::from(count);
        sent.fetch_add(u64::from(count), Ordering::Relaxed);
    }
    if std::env::var_os("FLOOD_DEBUG").is_some() {
        eprintln!(
            "flood thread: {done} frames in {calls} calls ({in_calls:?} in calls), {sleeps} sleeps, {:?}, {}",
            started.elapsed(),
            if socket.is_some() {
                "packet socket"
            } else {
                "live frames"
            }
        );
    }
    Ok(())
}

/// The MAC address of `iface` in namespace `netns`.
pub fn mac_of(netns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let output = crate::netns::ip(&["-n", netns, "-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {iface} in {netns}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of `kind` that no test sends: for the frames it makes.
    fn unsent(kind: Kind) -> Spec {
        Spec {
            kind,
            netns: String::new(),
            iface: String::new(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 19, 0, 0),
            dst: Ipv4Addr::new(198, 18, 0, 1),
            qname: "www.lab.example".into(),
            rate: None,
            threads: 1,
        }
    }

    #[test]
    fn the_template_is_a_valid_query_with_a_zero_udp_checksum() {
        let frame = template(&unsent(Kind::Spoofed));
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4");
        };
        let header = ip.header().to_header();
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
        let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.destination_port(), 53);
        assert_eq!(udp.checksum(), 0);
    }

    #[test]
    fn random_sources_are_unicast_outside_the_servers_network() {
        let avoid = [198, 18, 0];
        let mut firsts = [0u32; 256];
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let source = random_source(random as u32, (random >> 32) as u32, avoid);
            assert!(!matches!(source[0], 0 | 127 | 224..), "{source:?}");
            assert_ne!(source[..3], avoid);
            firsts[usize::from(source[0])] += 1;
        }
        // Every allowed /8 gets its share (1/222 of a million: about 4 500).
        for (first, count) in firsts.iter().enumerate() {
            if matches!(first, 0 | 127 | 224..) {
                assert_eq!(*count, 0);
            } else {
                assert!((4000..5000).contains(count), "{first}/8: {count}");
            }
        }
        // The extremes of the random words: the ends of the two unicast ranges.
        assert_eq!(random_source(0, 0, avoid)[0], 1);
        assert_eq!(random_source(0, u32::MAX, avoid)[0], 223);
        assert_eq!(
            random_source(0, (126u64 << 32).div_ceil(222) as u32, avoid)[0],
            128
        );
        // The server's own /24 is avoided.
        assert_eq!(
            random_source(0x0007_0012, (196u64 << 32).div_ceil(222) as u32, avoid),
            [198, 18, 1, 7]
        );
    }

    #[test]
    fn the_packet_socket_spoofs_a_random_source_with_a_valid_checksum() {
        let spec = unsent(Kind::Random);
        let mut frame = template(&spec);
        spoof(&mut frame, Kind::Random, 0x1234_5678_9abc_def0);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4");
        };
        let header = ip.header().to_header();
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
        assert_eq!(
            header.source,
            random_source(0x9abc_def0, 0x1234_5678, [198, 18, 0])
        );
        let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.source_port(), 0x5678 | 1024);
    }
}
