//! TCP to the server's port 53 over veth, as an abusive client and a spoofer would send
//! it: queries pipelined on one connection are held to the per-source limit, and blind
//! segments on a half-open connection draw nothing back. Needs root.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use dns_xdp_testkit::{
    loader::Loader,
    netns::{CLIENT_V4, Pair, SERVER_V4},
    packet::dns_query,
    raw_tcp::{ACK, RST, RawTcp, SYN, Seen},
};

const RATE: u64 = 10;
const BURST: u64 = 20;
const QUERIES: u16 = 1000;
/// How long the client keeps its queries in flight.
/// How long the client keeps its queries in flight: long enough for the refused
/// segment to be sent again (the stack backs off: 0.2, 0.6, 1.4, 3.0, 6.2 s) into a full
/// bucket.
const WINDOW: Duration = Duration::from_secs(8);

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap()
}

/// A DNS-over-TCP server on the server's port 53 that answers every message of each
/// connection (the query back with QR set) and waits as long as its client does.
fn pipelining_server(pair: &Pair) -> std::thread::JoinHandle<()> {
    let listener = pair
        .server
        .run(|| TcpListener::bind((SERVER_V4, 53)))
        .unwrap()
        .expect("binding port 53");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(WINDOW + Duration::from_secs(5)))
                .unwrap();
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                while stream.read_exact(&mut len).is_ok() {
                    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut message).is_err() || message.len() < 3 {
                        return;
                    }
                    message[2] |= 0x80;
                    if stream
                        .write_all(&len)
                        .and(stream.write_all(&message))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    })
}

/// Connects from the client, writes `QUERIES` framed queries at once (the stack packs
/// them into full segments), and reads answers for `WINDOW`. Returns the answers, the
/// seconds from connecting to the last answer, the connection's MSS and the framed
/// length of one query.
fn pipeline(pair: &Pair) -> (u64, f64, usize, usize) {
    pair.client
        .run(|| {
            let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
            let started = Instant::now();
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).unwrap();
            stream.set_nodelay(true).unwrap();
            let mut mss: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as u32;
            // SAFETY: an int-sized option read into a local.
            unsafe {
                libc::getsockopt(
                    stream.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_MAXSEG,
                    (&raw mut mss).cast(),
                    &mut len,
                )
            };
            let mut queries = Vec::new();
            for id in 0..QUERIES {
                let query = dns_query(id, "example.com");
                queries.extend((query.len() as u16).to_be_bytes());
                queries.extend(query);
            }
            let framed = queries.len() / usize::from(QUERIES);
            let mut writer = stream.try_clone().unwrap();
            let writing = std::thread::spawn(move || {
                let _ = writer.write_all(&queries);
            });
            let mut answers = 0;
            let mut last = started.elapsed();
            let mut len = [0u8; 2];
            while started.elapsed() < WINDOW {
                stream
                    .set_read_timeout(Some(
                        WINDOW.saturating_sub(started.elapsed()) + Duration::from_millis(1),
                    ))
                    .unwrap();
                if stream.read_exact(&mut len).is_err() {
                    break;
                }
                let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut message).is_err() {
                    break;
                }
                answers += 1;
                last = started.elapsed();
                if answers == u64::from(QUERIES) {
                    break;
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = writing.join();
            (answers, last.as_secs_f64(), mss as usize, framed)
        })
        .unwrap()
}

#[test]
fn queries_pipelined_on_one_connection_are_held_to_the_sources_limit() {
    let pair = Pair::new().expect("creating namespaces");
    let server = pipelining_server(&pair);
    // Without dns-xdp: every query is answered.
    let (before, _, _, _) = pipeline(&pair);
    assert_eq!(before, u64::from(QUERIES));
    let rate = format!("{RATE}/s");
    let burst = BURST.to_string();
    let loader = Loader::attach(
        &pair.server,
        &["--rate", &rate, "--burst", &burst, "--levels", "none"],
    )
    .expect("attaching");
    let (answered, seconds, mss, framed) = pipeline(&pair);
    let (_, report) = loader.interrupt().expect("detaching");
    drop(server);
    // A segment cannot be split: one carrying more queries than the burst passes whole
    // into a full bucket (and the source owes the rest), so the bound is the larger of
    // the burst and the most queries one segment holds.
    let per_segment = mss.div_ceil(framed) as u64;
    let bound = BURST.max(per_segment) + (RATE as f64 * seconds).floor() as u64;
    println!(
        "pipelining: {before} of {QUERIES} answered without dns-xdp; with it (rate {RATE}/s, \
         burst {BURST}) {answered} in {seconds:.2} s, bound {bound} (MSS {mss}, {per_segment} \
         queries per segment); segments charged {}, messages charged {}, rate-limited {}, \
         out of order {}",
        counter(&report, "tcp_segment_charged"),
        counter(&report, "tcp_messages_charged"),
        counter(&report, "rate_limited"),
        counter(&report, "tcp_out_of_order"),
    );
    assert!(answered <= bound, "{answered} answered, bound {bound}");
    assert!(
        answered >= BURST,
        "{answered} answered: the burst must pass"
    );
    assert!(counter(&report, "tcp_messages_charged") >= answered);
}

/// Sends a SYN from the client's `port` to the server's port 53 (raw: no socket behind
/// it), waits for the SYN-ACK, then `count` ACKs acknowledging other numbers than the
/// server's (a spoofer that never saw the SYN-ACK guesses). Returns the RSTs from port 53
/// to `port` that came back, and whether the SYN-ACK did.
fn resets_for_blind_acks(pair: &Pair, port: u16, count: u32) -> (usize, bool) {
    pair.client
        .run(move || {
            let client: Ipv4Addr = CLIENT_V4.parse().unwrap();
            let raw = RawTcp::open(client, SERVER_V4.parse().unwrap());
            let from_server =
                move |seen: &Seen| seen.source_port == 53 && seen.destination_port == port;
            raw.send((port, 53), 1000, 0, SYN, &[]);
            let syn_ack = raw
                .receive(
                    Duration::from_secs(2),
                    |seen| from_server(seen) && seen.flags & (SYN | ACK) == SYN | ACK,
                    1,
                )
                .first()
                .copied();
            let Some(syn_ack) = syn_ack else {
                return (0, false);
            };
            for index in 0..count {
                // Anything but the one acceptable number.
                let guess = syn_ack.seq.wrapping_add(2 + index.wrapping_mul(7919));
                raw.send((port, 53), 1001, guess, ACK, &[]);
                if index % 1000 == 999 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let resets = raw.receive(
                Duration::from_millis(500),
                |seen| from_server(seen) && seen.flags & RST != 0,
                usize::MAX,
            );
            (resets.len(), true)
        })
        .unwrap()
}

#[test]
fn blind_acks_on_a_half_open_connection_draw_nothing_back() {
    let pair = Pair::new().expect("creating namespaces");
    let listener = pair
        .server
        .run(|| TcpListener::bind((SERVER_V4, 53)))
        .unwrap()
        .expect("binding port 53");
    // The client's own stack must not reset the SYN-ACK its raw SYN draws: the
    // connection stays half-open at the server, as a spoofed SYN leaves it.
    pair.client
        .command("nft")
        .args(["add table ip blind; add chain ip blind out { type filter hook output priority 0; }; add rule ip blind out tcp flags & rst == rst tcp sport 30000-30100 drop"])
        .status()
        .unwrap();
    // Without dns-xdp the server's stack answers each with a RST.
    let (before, answered) = resets_for_blind_acks(&pair, 30_000, 200);
    assert!(answered, "no SYN-ACK without dns-xdp");
    assert!(
        before > 100,
        "{before} RSTs: the test must see them without dns-xdp"
    );
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");
    const ACKS: u32 = 10_000;
    let (after, answered) = resets_for_blind_acks(&pair, 30_001, ACKS);
    let (_, report) = loader.interrupt().expect("detaching");
    drop(listener);
    println!(
        "blind ACKs on a half-open connection: {before} RSTs for 200 without dns-xdp, \
         {after} for {ACKS} with it; tcp_bad_ack {}",
        counter(&report, "tcp_bad_ack")
    );
    assert!(answered, "no SYN-ACK with dns-xdp");
    assert_eq!(after, 0);
    assert_eq!(counter(&report, "tcp_bad_ack"), u64::from(ACKS));
}
