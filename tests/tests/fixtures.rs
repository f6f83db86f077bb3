//! Table-driven BPF_PROG_TEST_RUN fixtures: each crafted frame with its expected verdict
//! and counter deltas (katran-style). Needs root.

use dns_xdp_common::{Class, Counter, Counters, Family, L4, PortSet};
use dns_xdp_testkit::{
    packet::{DSTOPTS, ETH_P_8021AD, ETH_P_8021Q, HOPOPTS, Layer, ROUTING, build, dns_query},
    reference,
    testrun::{Harness, XDP_DROP, XDP_PASS},
};

const UDP4: Class = Class::Query {
    l4: L4::Udp,
    family: Family::V4,
};
const TCP4: Class = Class::Query {
    l4: L4::Tcp,
    family: Family::V4,
};
const UDP6: Class = Class::Query {
    l4: L4::Udp,
    family: Family::V6,
};
const TCP6: Class = Class::Query {
    l4: L4::Tcp,
    family: Family::V6,
};

struct Fixture {
    description: &'static str,
    frame: Vec<u8>,
    class: Class,
}

fn fixture(description: &'static str, frame: Vec<u8>, class: Class) -> Fixture {
    Fixture {
        description,
        frame,
        class,
    }
}

fn query() -> Layer {
    Layer::Payload(dns_query(0x1234, "example.com"))
}

/// `frame` with `bytes` written at `offset`.
fn patched(mut frame: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    frame
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// A DNS message after the transport `layers` end with, unless that is TCP: a TCP
/// segment here is a connection attempt, which carries no data.
fn with_query(mut layers: Vec<Layer>) -> Vec<u8> {
    if !matches!(layers.last(), Some(Layer::Tcp { .. })) {
        layers.push(query());
    }
    build(&layers)
}

fn v4(l4: Layer) -> Vec<u8> {
    with_query(vec![Layer::Eth, Layer::ipv4(), l4])
}

fn v6(layers: &[Layer]) -> Vec<u8> {
    let mut all = vec![Layer::Eth, Layer::Ipv6];
    all.extend_from_slice(layers);
    with_query(all)
}

fn ext(protocol: u8) -> Layer {
    Layer::Ipv6Ext {
        protocol,
        len_units: 0,
    }
}

// Offsets in an untagged frame.
const IP: usize = 14;
const L4_AFTER_V4: usize = IP + 20;
const L4_AFTER_V6: usize = IP + 40;

fn fixtures() -> Vec<Fixture> {
    let options = |words: usize| Layer::Ipv4 {
        options: vec![1; words * 4], // NOP options
        frag_offset: 0,
        more_fragments: false,
    };
    let fragment = |frag_offset, more_fragments| Layer::Ipv4 {
        options: Vec::new(),
        frag_offset,
        more_fragments,
    };
    let udp4 = v4(Layer::udp(53));
    let tcp4 = v4(Layer::tcp(53));
    let udp6 = v6(&[Layer::udp(53)]);
    vec![
        // IPv4
        fixture("IPv4 UDP query", udp4.clone(), UDP4),
        fixture("IPv4 TCP query", tcp4.clone(), TCP4),
        fixture(
            "IPv4 UDP 53 to 53 is a query",
            v4(Layer::Udp { src: 53, dst: 53 }),
            UDP4,
        ),
        fixture(
            "IPv4 UDP answer from port 53",
            v4(Layer::Udp {
                src: 53,
                dst: 40000,
            }),
            Class::Answer {
                l4: L4::Udp,
                family: Family::V4,
            },
        ),
        fixture(
            "IPv4 TCP answer from port 53",
            v4(Layer::Tcp {
                src: 53,
                dst: 40000,
            }),
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V4,
            },
        ),
        fixture(
            "IPv4 UDP to another port",
            v4(Layer::udp(5353)),
            Class::NonDns,
        ),
        fixture(
            "IPv4 with 8 bytes of options",
            build(&[Layer::Eth, options(2), Layer::udp(53), query()]),
            UDP4,
        ),
        fixture(
            "IPv4 with 40 bytes of options (IHL 15)",
            build(&[Layer::Eth, options(10), Layer::udp(53), query()]),
            UDP4,
        ),
        fixture(
            "IPv4 with an authentication header",
            build(&[
                Layer::Eth,
                Layer::ipv4(),
                Layer::Auth { icv_words: 3 },
                Layer::udp(53),
                query(),
            ]),
            UDP4,
        ),
        fixture(
            "IPv4 with Ethernet padding after the datagram",
            [udp4.clone(), vec![0; 18]].concat(),
            UDP4,
        ),
        fixture("IPv4 ICMP", v4(Layer::OtherL4(1)), Class::NonDns),
        fixture(
            "TCP with 12 bytes of options (data offset 8)",
            patched(
                build(&[
                    Layer::Eth,
                    Layer::ipv4(),
                    Layer::tcp(53),
                    // Twelve no-operation options.
                    Layer::Payload(vec![1; 12]),
                ]),
                L4_AFTER_V4 + 12,
                &[8 << 4],
            ),
            TCP4,
        ),
        // IPv6
        fixture("IPv6 UDP query", udp6.clone(), UDP6),
        fixture("IPv6 TCP query", v6(&[Layer::tcp(53)]), TCP6),
        fixture(
            "IPv6 TCP answer from port 53",
            v6(&[Layer::Tcp {
                src: 53,
                dst: 40000,
            }]),
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V6,
            },
        ),
        fixture(
            "IPv6 hop-by-hop, destination options, routing, then UDP",
            v6(&[
                ext(HOPOPTS),
                ext(DSTOPTS),
                Layer::Ipv6Ext {
                    protocol: ROUTING,
                    len_units: 2,
                },
                Layer::udp(53),
            ]),
            UDP6,
        ),
        fixture(
            "IPv6 authentication header then TCP",
            v6(&[Layer::Auth { icv_words: 4 }, Layer::tcp(53)]),
            TCP6,
        ),
        fixture(
            "IPv6 with 8 extension headers (the most walked)",
            v6(&[
                ext(HOPOPTS),
                ext(DSTOPTS),
                ext(ROUTING),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                Layer::udp(53),
            ]),
            UDP6,
        ),
        fixture(
            "IPv6 with 9 extension headers",
            v6(&[
                ext(HOPOPTS),
                ext(DSTOPTS),
                ext(ROUTING),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                ext(DSTOPTS),
                Layer::udp(53),
            ]),
            Class::Malformed,
        ),
        fixture(
            "IPv6 hop-by-hop after another extension header",
            v6(&[ext(DSTOPTS), ext(HOPOPTS), Layer::udp(53)]),
            Class::Malformed,
        ),
        fixture("IPv6 ICMPv6", v6(&[Layer::OtherL4(58)]), Class::NonDns),
        // VLAN
        fixture(
            "802.1Q tag, IPv4 UDP",
            build(&[
                Layer::Eth,
                Layer::Vlan(ETH_P_8021Q),
                Layer::ipv4(),
                Layer::udp(53),
                query(),
            ]),
            UDP4,
        ),
        fixture(
            "QinQ (802.1ad + 802.1Q), IPv6 TCP",
            build(&[
                Layer::Eth,
                Layer::Vlan(ETH_P_8021AD),
                Layer::Vlan(ETH_P_8021Q),
                Layer::Ipv6,
                Layer::tcp(53),
            ]),
            TCP6,
        ),
        fixture(
            "three VLAN tags: more than the parser reads, dropped",
            build(&[
                Layer::Eth,
                Layer::Vlan(ETH_P_8021AD),
                Layer::Vlan(ETH_P_8021Q),
                Layer::Vlan(ETH_P_8021Q),
                Layer::ipv4(),
                Layer::udp(53),
                query(),
            ]),
            Class::Malformed,
        ),
        fixture(
            "ARP",
            build(&[
                Layer::Eth,
                // Ethernet/IPv4 ARP request: 8 bytes of header, 20 of addresses.
                Layer::Payload(
                    [0, 1, 8, 0, 6, 4, 0, 1]
                        .into_iter()
                        .chain([0; 20])
                        .collect(),
                ),
            ]),
            Class::NonDns,
        ),
        // Fragments
        fixture(
            "IPv4 first fragment: classified by its UDP header",
            // The UDP length covers the whole datagram, longer than this fragment.
            patched(
                build(&[Layer::Eth, fragment(0, true), Layer::udp(53), query()]),
                L4_AFTER_V4 + 4,
                &3000u16.to_be_bytes(),
            ),
            UDP4,
        ),
        fixture(
            "IPv4 non-first fragment",
            build(&[Layer::Eth, fragment(185, true), Layer::udp(53), query()]),
            Class::Fragment,
        ),
        fixture(
            "IPv4 last fragment",
            build(&[
                Layer::Eth,
                fragment(370, false),
                Layer::Payload(vec![0xab; 100]),
            ]),
            Class::Fragment,
        ),
        fixture(
            "IPv6 first fragment: classified by its UDP header",
            v6(&[
                Layer::Ipv6Frag {
                    offset: 0,
                    more_fragments: true,
                },
                Layer::udp(53),
            ]),
            UDP6,
        ),
        fixture(
            "IPv6 non-first fragment",
            v6(&[
                Layer::Ipv6Frag {
                    offset: 185,
                    more_fragments: false,
                },
                Layer::udp(53),
            ]),
            Class::Fragment,
        ),
        // Truncated at each layer
        fixture(
            "runt: 14-byte frame, unknown EtherType",
            vec![0xff; 12].into_iter().chain([0x88, 0xb5]).collect(),
            Class::NonDns,
        ),
        fixture(
            "truncated after Ethernet (IPv4 EtherType)",
            truncated(udp4.clone(), IP),
            Class::Malformed,
        ),
        fixture(
            "truncated in a VLAN tag",
            truncated(
                build(&[Layer::Eth, Layer::Vlan(ETH_P_8021Q), Layer::ipv4()]),
                IP + 2,
            ),
            Class::Malformed,
        ),
        fixture(
            "truncated IPv4 header",
            truncated(udp4.clone(), IP + 19),
            Class::Malformed,
        ),
        fixture(
            "truncated IPv4 options",
            truncated(build(&[Layer::Eth, options(2)]), IP + 24),
            Class::Malformed,
        ),
        fixture(
            "IPv4 total length beyond the frame",
            truncated(udp4.clone(), udp4.len() - 1),
            Class::Malformed,
        ),
        fixture(
            "IPv4 total length below the header length",
            patched(udp4.clone(), IP + 2, &[0, 19]),
            Class::Malformed,
        ),
        fixture(
            "IPv4 IHL below 5",
            patched(udp4.clone(), IP, &[0x44]),
            Class::Malformed,
        ),
        fixture(
            "IPv4 EtherType carrying version 6",
            patched(udp4.clone(), IP, &[0x65]),
            Class::Malformed,
        ),
        fixture(
            "truncated IPv6 header",
            truncated(udp6.clone(), IP + 39),
            Class::Malformed,
        ),
        fixture(
            "IPv6 payload length beyond the frame",
            truncated(udp6.clone(), udp6.len() - 1),
            Class::Malformed,
        ),
        fixture(
            "IPv6 extension header longer than the payload",
            patched(v6(&[ext(DSTOPTS), Layer::udp(53)]), L4_AFTER_V6 + 1, &[200]),
            Class::Malformed,
        ),
        fixture(
            "IPv6 authentication header with zero length",
            patched(
                v6(&[Layer::Auth { icv_words: 1 }, Layer::udp(53)]),
                L4_AFTER_V6 + 1,
                &[0],
            ),
            Class::Malformed,
        ),
        fixture(
            "truncated UDP header",
            // IPv4 total length 24: four bytes of UDP header.
            truncated(
                patched(udp4.clone(), IP + 2, &24u16.to_be_bytes()),
                L4_AFTER_V4 + 4,
            ),
            Class::Malformed,
        ),
        fixture(
            "UDP length below 8",
            patched(udp4.clone(), L4_AFTER_V4 + 4, &[0, 7]),
            Class::Malformed,
        ),
        fixture(
            "UDP length beyond the IP payload",
            patched(udp4.clone(), L4_AFTER_V4 + 4, &[0x10, 0]),
            Class::Malformed,
        ),
        fixture(
            "UDP length 0 (as long as the IP payload)",
            patched(udp4.clone(), L4_AFTER_V4 + 4, &[0, 0]),
            UDP4,
        ),
        fixture(
            "truncated TCP header",
            truncated(
                patched(tcp4.clone(), IP + 2, &(20u16 + 10).to_be_bytes()),
                L4_AFTER_V4 + 10,
            ),
            Class::Malformed,
        ),
        fixture(
            "TCP data offset below 5",
            patched(tcp4.clone(), L4_AFTER_V4 + 12, &[4 << 4]),
            Class::Malformed,
        ),
        fixture(
            "TCP data offset beyond the payload",
            patched(tcp4.clone(), L4_AFTER_V4 + 12, &[15 << 4]),
            Class::Malformed,
        ),
    ]
}

/// The verdict and counter deltas of a frame of `class` with nothing configured: queries
/// and non-DNS pass; answers match no query this host sent and are dropped; malformed
/// frames are dropped; later fragments belong to no admitted answer and are policed as
/// queries (no limit: passed).
fn expected(class: Class) -> (u32, Counters) {
    let mut counters = Counters::default();
    counters.bump(Counter::Packets);
    counters.bump(class.counter());
    let verdict = match class {
        Class::Answer { .. } => {
            counters.bump(Counter::AnswerUnsolicited);
            XDP_DROP
        }
        Class::Malformed => XDP_DROP,
        Class::Fragment => {
            counters.bump(Counter::FragmentPoliced);
            XDP_PASS
        }
        Class::Query { .. } | Class::NonDns => XDP_PASS,
    };
    (verdict, counters)
}

#[test]
fn every_fixture_gets_its_verdict_and_counters() {
    let mut harness = Harness::new(&[53]).expect("loading the programs (are we root?)");
    let mut ports = PortSet::EMPTY;
    ports.insert(53);
    let fixtures = fixtures();
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let outcome = harness.run(&fixture.frame).expect(fixture.description);
        let (verdict, delta) = expected(fixture.class);
        if outcome.verdict != verdict || outcome.delta != delta {
            failures.push(format!(
                "{}: expected {:?}, got verdict {} bumping {:?}",
                fixture.description,
                fixture.class,
                outcome.verdict,
                outcome.bumped()
            ));
        }
        // The independent parser must agree with the table too.
        let reference = reference::classify(&fixture.frame, &ports);
        if reference != fixture.class {
            failures.push(format!(
                "{}: etherparse reference says {reference:?}, table says {:?}",
                fixture.description, fixture.class
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
    println!("{} fixtures passed", fixtures.len());
}

#[test]
fn configured_ports_replace_the_default() {
    let mut harness = Harness::new(&[853, 5353]).unwrap();
    let run = |harness: &mut Harness, l4| harness.run(&v4(l4)).unwrap().bumped();
    assert_eq!(run(&mut harness, Layer::tcp(853)), [Counter::QueryTcp4]);
    assert_eq!(run(&mut harness, Layer::udp(5353)), [Counter::QueryUdp4]);
    assert_eq!(run(&mut harness, Layer::udp(53)), [Counter::NonDns]);
}

#[test]
fn egress_counts_responses_and_upstream_queries_with_the_same_parser() {
    use dns_xdp_common::EgressCounter;
    let mut harness = Harness::new(&[53]).unwrap();
    let cases = [
        (
            v4(Layer::Udp {
                src: 53,
                dst: 40000,
            }),
            Some(EgressCounter::ResponseUdp4Packets),
        ),
        (
            v6(&[Layer::Tcp {
                src: 53,
                dst: 40000,
            }]),
            Some(EgressCounter::ResponseTcp6Packets),
        ),
        (v4(Layer::udp(53)), Some(EgressCounter::UpstreamUdp4Packets)),
        (
            v6(&[ext(HOPOPTS), Layer::udp(53)]),
            Some(EgressCounter::UpstreamUdp6Packets),
        ),
        (v4(Layer::udp(5353)), None),
        // (BPF_PROG_TEST_RUN refuses skbs shorter than their IP header: no truncated case.)
        (v4(Layer::OtherL4(1)), None),
    ];
    for (frame, expected) in cases {
        let delta = harness.run_egress(&frame).unwrap();
        assert_eq!(delta.get(EgressCounter::Packets), 1);
        let moved: Vec<_> = EgressCounter::ALL
            .iter()
            .filter(|&&counter| counter != EgressCounter::Packets && delta.get(counter) != 0)
            .map(|&counter| (counter, delta.get(counter)))
            .collect();
        match expected {
            Some(packets) => {
                let bytes = EgressCounter::ALL[packets as usize + 1];
                let mut expected = vec![(packets, 1), (bytes, frame.len() as u64)];
                // An upstream query is recorded as awaiting its answer, and a TCP
                // segment from the server as a connection it accepted.
                if packets.name().starts_with("upstream") || packets.name().contains("tcp") {
                    expected.push((EgressCounter::AwaitedRecorded, 1));
                }
                assert_eq!(moved, expected);
            }
            None => assert!(moved.is_empty(), "{moved:?}"),
        }
    }
}

#[test]
fn frames_shorter_than_ethernet_never_reach_the_program() {
    // The kernel rejects them before XDP (BPF_PROG_TEST_RUN and drivers alike).
    let mut harness = Harness::new(&[53]).unwrap();
    assert!(harness.run(&[0u8; 13]).is_err());
}
