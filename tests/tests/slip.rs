//! Slip: a rate-limited UDP query answered in XDP with a truncated reply (TC=1), checked
//! byte by byte with etherparse (checksums included), never longer than the query, over
//! IPv4 and IPv6. Needs root.

use dns_xdp::Settings;
use dns_xdp_common::Counter;
use dns_xdp_testkit::{
    flood::pin_to_cpu,
    packet::{DSTOPTS, Layer, build, dns_query},
    testrun::{Harness, XDP_DROP, XDP_PASS, XDP_TX},
};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// A query for example.com with an EDNS OPT record (which the reply must drop).
fn query_with_edns(id: u16) -> Vec<u8> {
    let mut query = dns_query(id, "example.com");
    query[10..12].copy_from_slice(&1u16.to_be_bytes()); // ARCOUNT
    query.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]); // root, OPT, 4096, no options
    query
}

fn slipping(slip: u32) -> Harness {
    Harness::with(&Settings {
        rate: Some("1/hour".parse().unwrap()),
        burst: 1,
        levels: dns_xdp::settings::Levels::None,
        slip,
        ..Settings::default()
    })
    .unwrap()
}

/// Checks that `reply` is the truncated answer to `query`: every header mirrored, the
/// checksums right (as etherparse computes them), the DNS message cut after the question.
fn check_reply(query: &[u8], reply: &[u8], name: &str) {
    assert!(
        reply.len() <= query.len(),
        "no amplification: {} > {}",
        reply.len(),
        query.len()
    );
    let asked = SlicedPacket::from_ethernet(query).unwrap();
    let answered = SlicedPacket::from_ethernet(reply).expect("the reply parses");
    let (Some(asked_link), Some(answered_link)) = (&asked.link, &answered.link) else {
        panic!()
    };
    let (etherparse::LinkSlice::Ethernet2(q), etherparse::LinkSlice::Ethernet2(r)) =
        (asked_link, answered_link)
    else {
        panic!("not Ethernet")
    };
    assert_eq!((r.source(), r.destination()), (q.destination(), q.source()));
    let (Some(TransportSlice::Udp(q_udp)), Some(TransportSlice::Udp(r_udp))) =
        (&asked.transport, &answered.transport)
    else {
        panic!("not UDP")
    };
    assert_eq!(
        (r_udp.source_port(), r_udp.destination_port()),
        (q_udp.destination_port(), q_udp.source_port())
    );
    let q_dns = q_udp.payload();
    let r_dns = r_udp.payload();
    let question_len = 12 + name.len() + 2 + 4;
    assert_eq!(r_dns.len(), question_len, "header and question only");
    assert_eq!(r_dns[..2], q_dns[..2], "same ID");
    assert_eq!(r_dns[2], 0x80 | 0x02 | (q_dns[2] & 0x01), "QR, TC, RD kept");
    assert_eq!(r_dns[3], 0);
    assert_eq!(r_dns[4..6], [0, 1], "one question");
    assert_eq!(r_dns[6..12], [0; 6], "no records");
    assert_eq!(r_dns[12..], q_dns[12..question_len], "the same question");
    let udp_header = r_udp.to_header();
    let expected_checksum = match (&asked.net, &answered.net) {
        (Some(NetSlice::Ipv4(q)), Some(NetSlice::Ipv4(r))) => {
            let header = r.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "IPv4 checksum"
            );
            assert_eq!(
                (header.source, header.destination),
                (q.header().destination(), q.header().source())
            );
            assert_eq!(
                usize::from(header.total_len),
                reply.len() - 14 - 4 * answered.link_exts.len()
            );
            udp_header.calc_checksum_ipv4(&header, r_dns).unwrap()
        }
        (Some(NetSlice::Ipv6(q)), Some(NetSlice::Ipv6(r))) => {
            let header = r.header().to_header();
            assert_eq!(
                (header.source, header.destination),
                (q.header().destination(), q.header().source())
            );
            assert_eq!(usize::from(header.payload_length), 8 + question_len);
            assert_eq!(header.hop_limit, 64);
            udp_header.calc_checksum_ipv6(&header, r_dns).unwrap()
        }
        other => panic!("families differ: {other:?}"),
    };
    assert_eq!(r_udp.checksum(), expected_checksum, "UDP checksum");
    assert_eq!(usize::from(r_udp.length()), 8 + question_len);
}

#[test]
fn a_slipped_query_gets_an_exact_truncated_reply() {
    // Slip counts refusals per CPU: all on CPU 0.
    pin_to_cpu(0);
    // example.com makes a 29-byte reply message: the checksum pads its last byte.
    for (name, layers) in [
        (
            "example.com",
            vec![
                Layer::Eth,
                Layer::ipv4(),
                Layer::udp(53),
                Layer::Payload(query_with_edns(0x4242)),
            ],
        ),
        // A VLAN tag stays as it was.
        (
            "example.com",
            vec![
                Layer::Eth,
                Layer::Vlan(0x8100),
                Layer::ipv4(),
                Layer::udp(53),
                Layer::Payload(query_with_edns(0x4243)),
            ],
        ),
        (
            "example.com",
            vec![
                Layer::Eth,
                Layer::Ipv6,
                Layer::udp(53),
                Layer::Payload(query_with_edns(0x4244)),
            ],
        ),
        // An even-length message, no padding.
        (
            "example.co",
            vec![
                Layer::Eth,
                Layer::Ipv6,
                Layer::udp(53),
                Layer::Payload(dns_query(0x4245, "example.co")),
            ],
        ),
    ] {
        let query = build(&layers);
        let mut harness = slipping(1);
        assert_eq!(
            harness.run_and_read(&query).unwrap().0,
            XDP_PASS,
            "the burst"
        );
        let (verdict, reply) = harness.run_and_read(&query).unwrap();
        assert_eq!(verdict, XDP_TX);
        check_reply(&query, &reply, name);
        let counters = harness.programs().maps().counters().unwrap();
        let slipped = (
            counters.get(Counter::Slipped),
            counters.get(Counter::RateLimited),
        );
        assert_eq!(slipped, (1, 1));
    }
    // IPv6 with an extension header, IPv4 with options or an authentication header:
    // dropped, never slipped (a reply would have to mirror or re-sign them).
    for (what, layers) in [
        (
            "IPv6 destination options",
            vec![
                Layer::Eth,
                Layer::Ipv6,
                Layer::Ipv6Ext {
                    protocol: DSTOPTS,
                    len_units: 0,
                },
                Layer::udp(53),
            ],
        ),
        (
            "IPv4 options",
            vec![
                Layer::Eth,
                Layer::Ipv4 {
                    options: vec![1; 8],
                    frag_offset: 0,
                    more_fragments: false,
                },
                Layer::udp(53),
            ],
        ),
        (
            "IPv4 authentication header",
            vec![
                Layer::Eth,
                Layer::ipv4(),
                Layer::Auth { icv_words: 1 },
                Layer::udp(53),
            ],
        ),
    ] {
        let mut layers = layers;
        layers.push(Layer::Payload(query_with_edns(1)));
        let query = build(&layers);
        let mut harness = slipping(1);
        assert_eq!(harness.run_and_read(&query).unwrap().0, XDP_PASS, "{what}");
        assert_eq!(harness.run_and_read(&query).unwrap().0, XDP_DROP, "{what}");
        let counters = harness.programs().maps().counters().unwrap();
        assert_eq!(counters.get(Counter::Slipped), 0, "{what}");
    }
}

#[test]
fn one_in_n_refused_queries_is_slipped_and_tcp_never() {
    // Slip counts refusals per CPU: all on CPU 0.
    pin_to_cpu(0);
    let query = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(dns_query(7, "example.com")),
    ]);
    let mut harness = slipping(3);
    assert_eq!(harness.run_and_read(&query).unwrap().0, XDP_PASS);
    let verdicts: Vec<u32> = (0..9)
        .map(|_| harness.run_and_read(&query).unwrap().0)
        .collect();
    assert_eq!(verdicts, [XDP_DROP, XDP_DROP, XDP_TX].repeat(3));
    // TCP: a SYN is refused, never slipped.
    let syn = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::Tcp {
            src: 40001,
            dst: 53,
        },
    ]);
    let mut tcp = slipping(1);
    assert_eq!(tcp.run_and_read(&syn).unwrap().0, XDP_PASS);
    assert_eq!(tcp.run_and_read(&syn).unwrap().0, XDP_DROP);
    // Dry-run drops nothing and so slips nothing.
    let mut dry = Harness::with(&Settings {
        rate: Some("1/hour".parse().unwrap()),
        burst: 1,
        slip: 1,
        dry_run: true,
        ..Settings::default()
    })
    .unwrap();
    assert_eq!(dry.run_and_read(&query).unwrap().0, XDP_PASS);
    assert_eq!(dry.run_and_read(&query).unwrap().0, XDP_PASS);
}

#[test]
fn over_veth_a_slipped_client_gets_tc_and_succeeds_over_tcp() {
    use dns_xdp_testkit::{
        dns::{Client, Responder},
        loader::Loader,
        netns::{Pair, SERVER_V4, SERVER_V6},
    };
    use std::net::SocketAddr;

    let pair = Pair::new().unwrap();
    let _responder = Responder::serve(&pair.server).unwrap();
    let limits = [
        "--rate", "1/min", "--burst", "1", "--levels", "none", "--slip", "1",
    ];
    let server_loader = Loader::attach(&pair.server, &limits).unwrap();
    // XDP_TX on veth needs an XDP program on the peer: the client side gets one too.
    let _client_loader = Loader::attach(&pair.client, &[]).unwrap();

    for address in [SERVER_V4, SERVER_V6] {
        let server = SocketAddr::new(address.parse().unwrap(), 53);
        let (first, second, over_tcp) = pair
            .client
            .run(move || {
                let client = Client::default();
                let first = client.udp(server, &dns_query(1, "example.com")).unwrap();
                let second = client.udp(server, &dns_query(2, "example.com")).unwrap();
                let over_tcp = client.tcp(server, &dns_query(3, "example.com"));
                (first, second, over_tcp)
            })
            .unwrap();
        assert_eq!(
            first[2] & 0x02,
            0,
            "{address}: the first query is answered by the server"
        );
        assert_eq!(
            second[2] & 0x82,
            0x82,
            "{address}: the second gets a truncated reply from XDP"
        );
        assert_eq!(second[6..12], [0; 6], "{address}: with no records");
        assert!(
            over_tcp.is_ok(),
            "{address}: the retry over TCP succeeds: {over_tcp:?}"
        );
    }
    let (_, report) = server_loader.interrupt().unwrap();
    assert_eq!(report["counters"]["slipped"], 2, "{report}");
}

/// The IPv4 query of `slip_capped`'s floods, from `source`.
fn query_from(source: [u8; 4]) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(query_with_edns(9)),
    ]);
    frame[14 + 12..14 + 16].copy_from_slice(&source);
    frame
}

#[test]
fn a_flood_spoofing_one_victim_gets_it_no_more_than_the_cap() {
    // Slip counts refusals per CPU: all on CPU 0.
    pin_to_cpu(0);
    // Slip 2, as the packaged example; the default caps: 10/s per /24, 1000/s in all.
    let mut harness = slipping(2);
    let frame = query_from([198, 51, 100, 7]);
    const RUNS: u32 = 100_000;
    // One run per call: a slipped frame comes back rewritten into its reply, so the
    // kernel's repeat would run the next query on a reply.
    let started = std::time::Instant::now();
    for _ in 0..RUNS {
        harness
            .run_program(dns_xdp::programs::XDP_PROGRAM, &frame, 1)
            .unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counters = harness.programs().maps().counters().unwrap();
    let (slipped, capped) = (
        counters.get(Counter::Slipped),
        counters.get(Counter::SlipCapped),
    );
    println!(
        "{RUNS} queries spoofing one victim in {elapsed:.3} s ({:.0}/s): {slipped} slipped, \
         {capped} dropped by the cap",
        f64::from(RUNS) / elapsed
    );
    // A burst of one second's worth (10), then 10/s.
    let bound = 10 + (10.0 * elapsed).ceil() as u64;
    assert!(slipped <= bound, "{slipped} slipped, at most {bound}");
    assert!(slipped >= 10, "the cap's burst is slipped: {slipped}");
    // Half the refused queries come up for slipping; all but the slipped are capped.
    assert_eq!(slipped + capped, u64::from(RUNS - 1) / 2);
    // A neighbour in the same /24 shares the victim's cap, which the flood left empty: it
    // gets only what the cap refilled since (10/s), while another /24 gets its own
    // burst of 10. Counted, not timed: the cap refills while this test waits for a CPU.
    let flood_ended = std::time::Instant::now();
    let slips_of = |harness: &mut Harness, source: [u8; 4]| {
        (0..40)
            .filter(|_| harness.run(&query_from(source)).unwrap().verdict == XDP_TX)
            .count() as u64
    };
    let neighbour = slips_of(&mut harness, [198, 51, 100, 8]);
    let refilled = 1 + (10.0 * flood_ended.elapsed().as_secs_f64()) as u64;
    let other = slips_of(&mut harness, [198, 51, 101, 8]);
    assert!(
        neighbour <= refilled,
        "the victim's /24 shares its cap: {neighbour} slipped, at most {refilled}"
    );
    assert!(
        other >= 10,
        "another /24 has a cap of its own: {other} slipped"
    );
}

#[test]
fn slipped_replies_to_all_destinations_stay_under_the_global_cap() {
    // Slip counts refusals per CPU: all on CPU 0.
    pin_to_cpu(0);
    let mut harness = Harness::with(&Settings {
        rate: Some("1/hour".parse().unwrap()),
        burst: 1,
        levels: dns_xdp::settings::Levels::None,
        slip: 1,
        slip_cap: "50/s".parse().unwrap(),
        ..Settings::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    // 400 victims in 400 /24s, each refused 3 times: under their own caps, over the
    // global one.
    for victim in 0..400u32 {
        let frame = query_from([198, 18 + (victim >> 8) as u8, victim as u8, 1]);
        for _ in 0..4 {
            harness.run(&frame).unwrap();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counters = harness.programs().maps().counters().unwrap();
    let slipped = counters.get(Counter::Slipped);
    let bound = 50 + (50.0 * elapsed).ceil() as u64;
    println!("400 victims x 3 refusals in {elapsed:.3} s: {slipped} slipped (at most {bound})");
    assert!(
        slipped <= bound && slipped >= 50,
        "{slipped} slipped, at most {bound}"
    );
    assert_eq!(slipped + counters.get(Counter::SlipCapped), 1200);
}
