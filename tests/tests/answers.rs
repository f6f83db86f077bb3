//! Answer admission through BPF_PROG_TEST_RUN: an answer (a packet from a DNS port)
//! passes only if the egress program saw this host send the query it answers (UDP:
//! addresses, ports and DNS ID) or a segment of its TCP connection; the later fragments
//! of an admitted answer pass with it. Everything else from a DNS port is dropped.
//! (The server's side of TCP is in `tcp_stream.rs`.) Needs root.

use dns_xdp::Settings;
use dns_xdp_common::{Counter, EgressCounter};
use dns_xdp_testkit::{
    packet::{Layer, build, dns_query, reversed},
    testrun::{Harness, XDP_DROP, XDP_PASS},
};

const IP: usize = 14;
/// An upstream server (the remote end) and this host's port towards it.
const UPSTREAM_PORT: u16 = 53;
const LOCAL_PORT: u16 = 40_000;

/// This host's query with `id` leaving for the upstream server (as egress sees it).
fn query_out(id: u16) -> Vec<u8> {
    build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::Udp {
            src: LOCAL_PORT,
            dst: UPSTREAM_PORT,
        },
        Layer::Payload(dns_query(id, "example.com")),
    ])
}

/// The upstream server's answer to `query` (as XDP sees it): the same message, QR set.
fn answer_to(query: &[u8]) -> Vec<u8> {
    let mut answer = reversed(query.to_vec());
    answer[IP + 28 + 2] |= 0x80;
    answer
}

/// `frame` with the IPv4 identification, fragment offset (8-byte units) and MF set.
fn fragment(mut frame: Vec<u8>, id: u16, offset: u16, more: bool) -> Vec<u8> {
    frame[IP + 4..IP + 6].copy_from_slice(&id.to_be_bytes());
    let flags = offset | if more { 0x2000 } else { 0 };
    frame[IP + 6..IP + 8].copy_from_slice(&flags.to_be_bytes());
    frame
}

/// A later fragment from the upstream server: an IPv4 header and 32 bytes of data.
fn later_fragment(id: u16) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Eth,
        Layer::Ipv4 {
            options: Vec::new(),
            frag_offset: 185,
            more_fragments: false,
        },
        Layer::Payload(vec![0xab; 32]),
    ]);
    frame[IP + 9] = 17;
    let mut frame = fragment(frame, id, 185, false);
    for index in 0..4 {
        frame.swap(IP + 12 + index, IP + 16 + index);
    }
    frame
}

fn verdict(harness: &mut Harness, frame: &[u8]) -> (u32, Vec<Counter>) {
    let outcome = harness.run(frame).unwrap();
    (outcome.verdict, outcome.bumped())
}

#[test]
fn a_udp_answer_passes_once_and_only_with_its_query_id_and_ports() {
    let mut harness = Harness::new(&[53]).unwrap();
    let query = query_out(0x1111);
    let answer = answer_to(&query);
    // Before this host asked, the answer is unsolicited.
    assert_eq!(
        verdict(&mut harness, &answer),
        (
            XDP_DROP,
            vec![Counter::AnswerUdp4, Counter::AnswerUnsolicited]
        )
    );
    let recorded = harness.run_egress(&query).unwrap();
    assert_eq!(recorded.get(EgressCounter::AwaitedRecorded), 1);
    // Another ID, another local port, another server port: not an answer to it.
    let mut wrong_id = answer.clone();
    wrong_id[IP + 28..IP + 30].copy_from_slice(&0x1112u16.to_be_bytes());
    let mut wrong_port = answer.clone();
    wrong_port[IP + 22..IP + 24].copy_from_slice(&(LOCAL_PORT + 1).to_be_bytes());
    let mut wrong_server = answer.clone();
    wrong_server[IP + 12] ^= 1;
    for (what, frame) in [
        ("wrong ID", &wrong_id),
        ("wrong local port", &wrong_port),
        ("wrong server address", &wrong_server),
    ] {
        assert_eq!(
            verdict(&mut harness, frame),
            (
                XDP_DROP,
                vec![Counter::AnswerUdp4, Counter::AnswerUnsolicited]
            ),
            "{what}"
        );
    }
    assert_eq!(
        verdict(&mut harness, &answer),
        (XDP_PASS, vec![Counter::AnswerUdp4, Counter::AnswerAdmitted])
    );
    // The query is retired: a second answer (a duplicate, or a spoofer's late guess)
    // does not pass.
    assert_eq!(verdict(&mut harness, &answer).0, XDP_DROP);
}

#[test]
fn a_tcp_connection_this_host_opened_passes_both_ways() {
    let mut harness = Harness::new(&[53]).unwrap();
    let syn_out = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::Tcp {
            src: LOCAL_PORT,
            dst: UPSTREAM_PORT,
        },
    ]);
    let mut syn_ack_in = reversed(syn_out.clone());
    syn_ack_in[IP + 20 + 13] = 0x12;
    // A SYN from port 53 to a port of ours, or a segment of no connection: dropped.
    assert_eq!(
        verdict(&mut harness, &syn_ack_in),
        (
            XDP_DROP,
            vec![Counter::AnswerTcp4, Counter::AnswerUnsolicited]
        )
    );
    assert_eq!(
        harness
            .run_egress(&syn_out)
            .unwrap()
            .get(EgressCounter::AwaitedRecorded),
        1
    );
    let mut data_in = syn_ack_in.clone();
    data_in[IP + 20 + 13] = 0x18; // PSH, ACK
    for frame in [&syn_ack_in, &data_in, &data_in] {
        assert_eq!(
            verdict(&mut harness, frame),
            (XDP_PASS, vec![Counter::AnswerTcp4, Counter::AnswerAdmitted])
        );
    }
}

#[test]
fn the_later_fragments_of_an_admitted_answer_pass_and_no_others() {
    let mut harness = Harness::new(&[53]).unwrap();
    let query = query_out(0x2222);
    harness.run_egress(&query).unwrap();
    let first = fragment(answer_to(&query), 0x4242, 0, true);
    // A later fragment before its first one: policed as a query (no limit: passes).
    assert_eq!(
        verdict(&mut harness, &later_fragment(0x4242)),
        (XDP_PASS, vec![Counter::Fragment, Counter::FragmentPoliced])
    );
    assert_eq!(
        verdict(&mut harness, &first),
        (XDP_PASS, vec![Counter::AnswerUdp4, Counter::AnswerAdmitted])
    );
    assert_eq!(
        verdict(&mut harness, &later_fragment(0x4242)),
        (XDP_PASS, vec![Counter::Fragment, Counter::FragmentAdmitted])
    );
    assert_eq!(
        verdict(&mut harness, &later_fragment(0x4243)),
        (XDP_PASS, vec![Counter::Fragment, Counter::FragmentPoliced])
    );
}

#[test]
fn later_fragments_of_no_answer_are_charged_like_queries() {
    // A limit of one query an hour: the fragment spends it, the next one is refused.
    let settings = Settings {
        rate: Some("1/hour".parse().unwrap()),
        burst: 1,
        levels: dns_xdp::settings::Levels::None,
        ..Settings::default()
    };
    let mut harness = Harness::with(&settings).unwrap();
    let fragment = later_fragment(7);
    assert_eq!(verdict(&mut harness, &fragment).0, XDP_PASS);
    let (refused, bumped) = verdict(&mut harness, &fragment);
    assert_eq!(refused, XDP_DROP);
    assert!(bumped.contains(&Counter::RateLimited), "{bumped:?}");
}

#[test]
fn with_backending_off_every_answer_is_dropped_and_nothing_recorded() {
    let mut harness = Harness::with(&Settings {
        backending: false,
        ..Settings::default()
    })
    .unwrap();
    let query = query_out(0x3333);
    assert_eq!(
        harness
            .run_egress(&query)
            .unwrap()
            .get(EgressCounter::AwaitedRecorded),
        0
    );
    assert_eq!(
        verdict(&mut harness, &answer_to(&query)),
        (
            XDP_DROP,
            vec![Counter::AnswerUdp4, Counter::AnswerUnsolicited]
        )
    );
}

#[test]
fn in_dry_run_an_unsolicited_answer_passes_and_is_counted() {
    let mut harness = Harness::with(&Settings {
        dry_run: true,
        ..Settings::default()
    })
    .unwrap();
    let (passed, bumped) = verdict(&mut harness, &answer_to(&query_out(9)));
    assert_eq!(passed, XDP_PASS);
    assert_eq!(
        bumped,
        [
            Counter::AnswerUdp4,
            Counter::DryRunWouldDrop,
            Counter::AnswerUnsolicited
        ]
    );
}
