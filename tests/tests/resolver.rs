//! A real resolver behind dns-xdp: Unbound (from Debian) in the server namespace,
//! forwarding to NSD in the client namespace, with dns-xdp attached to the server's
//! interface and its conntrack bypass on. The resolver's upstream traffic (UDP, TCP, and
//! answers too large for one frame) must all come back through answer admission, and
//! none of it may stay in conntrack. Needs root, NSD and Unbound (`cargo xtask setup`).

use std::net::SocketAddr;

use dns_xdp_testkit::{
    dns::Client,
    loader::Loader,
    netns::{CLIENT_V4, Pair, SERVER_V4},
    packet::dns_query,
    process::ScratchDir,
    servers::{Forward, start_nsd, start_unbound},
};

/// A zone whose every name exists: `*.ZONE` has an A record, and (`big: true`)
/// `*.big.ZONE` a TXT record of about 2 400 bytes, which no 1 500-byte frame holds.
fn zone(name: &str, big: bool) -> String {
    let mut text = format!(
        "$ORIGIN {name}.\n$TTL 300\n\
         @ IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n\
         @ IN NS ns1\n\
         ns1 IN A {CLIENT_V4}\n\
         * IN A 198.18.0.99\n"
    );
    if big {
        let chunk = format!("\"{}\"", "x".repeat(200));
        text.push_str(&format!("*.big IN TXT {}\n", vec![chunk; 12].join(" ")));
    }
    text
}

/// A query for `name` of type `qtype`.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut query = dns_query(id, name);
    let at = query.len() - 4;
    query[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
    query
}

/// Whether `answer` answers with NOERROR and at least one record.
fn resolved(answer: &[u8]) -> bool {
    answer.len() > 12 && answer[3] & 0x0f == 0 && u16::from_be_bytes([answer[6], answer[7]]) > 0
}

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap()
}

const A: u16 = 1;
const TXT: u16 = 16;

#[test]
fn a_resolver_behind_dns_xdp_gets_every_answer_and_tracks_nothing() {
    let pair = Pair::new().expect("creating namespaces");
    let dir = ScratchDir::new("resolver").unwrap();
    let upstream = SocketAddr::new(CLIENT_V4.parse().unwrap(), 53);
    let resolver = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    let client_ns = pair.client.name().to_owned();
    let ask = move |netns: &str, server: SocketAddr, name: &str| {
        let name = name.to_owned();
        let handle = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let status = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(status, 0);
            Client::default()
                .udp(server, &query(1, &name, A))
                .is_ok_and(|answer| resolved(&answer))
        })
        .join()
        .unwrap()
    };
    let server_ns = pair.server.name().to_owned();
    let _nsd = start_nsd(
        &pair.client,
        CLIENT_V4,
        &[
            ("test.example", &zone("test.example", true)),
            ("tcp.example", &zone("tcp.example", false)),
        ],
        &dir.path().join("nsd"),
        || ask(&server_ns, upstream, "ready.test.example"),
    )
    .expect("starting NSD");
    let _unbound = start_unbound(
        &pair.server,
        SERVER_V4,
        &[
            Forward {
                zone: "test.example",
                server: CLIENT_V4,
                tcp: false,
            },
            Forward {
                zone: "tcp.example",
                server: CLIENT_V4,
                tcp: true,
            },
        ],
        &dir.path().join("unbound"),
        || ask(&client_ns, resolver, "ready.test.example"),
    )
    .expect("starting Unbound");
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");

    const LOOKUPS: u16 = 100;
    let (udp, tcp, large) = pair
        .client
        .run(move || {
            let client = Client::default();
            let mut answered = (0, 0, 0);
            for index in 0..LOOKUPS {
                // Every name is new to the resolver: each lookup goes upstream.
                let over_udp = client.udp(
                    resolver,
                    &query(index, &format!("u{index}.test.example"), A),
                );
                answered.0 += usize::from(over_udp.is_ok_and(|answer| resolved(&answer)));
                let over_tcp =
                    client.udp(resolver, &query(index, &format!("t{index}.tcp.example"), A));
                answered.1 += usize::from(over_tcp.is_ok_and(|answer| resolved(&answer)));
                // Too large for a UDP answer to this client: asked over TCP; upstream it
                // comes over UDP with EDNS 4096, in IP fragments.
                let big = client.tcp(
                    resolver,
                    &query(index, &format!("b{index}.big.test.example"), TXT),
                );
                answered.2 +=
                    usize::from(big.is_ok_and(|answer| resolved(&answer) && answer.len() > 2000));
            }
            answered
        })
        .unwrap();
    let tracked = pair
        .server
        .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))
        .unwrap()
        .expect("conntrack loaded");
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "Unbound behind dns-xdp: {udp}/{LOOKUPS} lookups upstream over UDP, {tcp}/{LOOKUPS} over \
         TCP, {large}/{LOOKUPS} with fragmented answers; answer_admitted {}, fragment_admitted \
         {}, answer_unsolicited {}; conntrack entries {}",
        counter(&report, "answer_admitted"),
        counter(&report, "fragment_admitted"),
        counter(&report, "answer_unsolicited"),
        tracked.trim()
    );
    let lookups = usize::from(LOOKUPS);
    assert_eq!((udp, tcp, large), (lookups, lookups, lookups));
    assert_eq!(counter(&report, "answer_unsolicited"), 0);
    assert!(counter(&report, "fragment_admitted") >= u64::from(LOOKUPS));
    assert_eq!(
        tracked.trim(),
        "0",
        "the resolver's traffic stayed in conntrack"
    );
}
