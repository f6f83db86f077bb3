//! The server's side of TCP through BPF_PROG_TEST_RUN: a segment to a DNS port other
//! than a SYN passes only on a connection whose SYN-ACK the server sent (the egress
//! program records it) and only if it acknowledges something the server sent; each
//! query it carries is charged once to the client's TCP data buckets, exactly where
//! XDP's view of the stream is the server's, at the worst case (one per 14 bytes)
//! elsewhere. Needs root.

use dns_xdp::{Settings, settings::Levels};
use dns_xdp_common::{Counter, EgressCounter, tcp::worst_case_messages};
use dns_xdp_testkit::{
    packet::{client_segment, framed_queries, reversed},
    testrun::{Harness, Outcome, XDP_DROP, XDP_PASS},
};

const IP: usize = 14;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

/// The client's initial sequence number: its stream wraps around 2^32 in the tests.
const CLIENT_ISN: u32 = u32::MAX - 20;
const SERVER_ISN: u32 = 0x7000_0000;

/// A segment from the server back to the client, as the egress program sees it.
fn segment_out(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    reversed(client_segment(flags, seq, ack, payload))
}

/// A connection whose handshake the server completed: SYN in, SYN-ACK out, ACK in.
/// Returns the client's next sequence number.
fn connect(harness: &mut Harness) -> u32 {
    let syn = harness
        .run(&client_segment(SYN, CLIENT_ISN, 0, &[]))
        .unwrap();
    assert_eq!(syn.verdict, XDP_PASS, "{:?}", syn.bumped());
    let client = CLIENT_ISN.wrapping_add(1);
    let recorded = harness
        .run_egress(&segment_out(SYN | ACK, SERVER_ISN, client, &[]))
        .unwrap();
    assert_eq!(recorded.get(EgressCounter::AwaitedRecorded), 1);
    let ack = harness
        .run(&client_segment(
            ACK,
            client,
            SERVER_ISN.wrapping_add(1),
            &[],
        ))
        .unwrap();
    assert_eq!(ack.verdict, XDP_PASS);
    assert_eq!(ack.bumped(), [Counter::QueryTcp4]);
    client
}

/// The server acknowledges the client's stream up to `client` (with an answer of
/// `answer_len` bytes, or none).
fn server_acks(harness: &mut Harness, client: u32) {
    harness
        .run_egress(&segment_out(ACK, SERVER_ISN.wrapping_add(1), client, &[]))
        .unwrap();
}

/// The client's data segment at `seq`: its verdict and the messages it was charged.
fn send(harness: &mut Harness, seq: u32, payload: &[u8]) -> (u32, u64, Outcome) {
    let outcome = harness
        .run(&client_segment(
            PSH_ACK,
            seq,
            SERVER_ISN.wrapping_add(1),
            payload,
        ))
        .unwrap();
    let charged = outcome.delta.get(Counter::TcpMessagesCharged);
    (outcome.verdict, charged, outcome)
}

/// The per-source limit of these tests: `burst` queries an hour, at the source's own
/// prefix only.
fn harness(burst: u32) -> Harness {
    Harness::with(&Settings {
        rate: Some("1/hour".parse().unwrap()),
        burst,
        levels: Levels::None,
        sample: 0,
        ..Settings::default()
    })
    .unwrap()
}

#[test]
fn segments_need_an_accepted_connection_and_an_acknowledgement_the_server_sent() {
    let mut harness = harness(3);
    let queries = framed_queries(1);
    // No connection (an ACK scan, a spoofed data segment): dropped, so no RST goes
    // back to whoever the source claims to be.
    for flags in [ACK, PSH_ACK, RST | ACK] {
        let outcome = harness.run(&client_segment(flags, 1, 1, &queries)).unwrap();
        assert_eq!(
            (outcome.verdict, outcome.bumped()),
            (XDP_DROP, vec![Counter::QueryTcp4, Counter::TcpUnsolicited]),
            "flags {flags:#x}"
        );
    }
    // A connection attempt carrying data (TCP Fast Open): dropped, the client retries
    // with a plain SYN.
    let fast_open = harness
        .run(&client_segment(SYN, CLIENT_ISN, 0, &queries))
        .unwrap();
    assert_eq!(
        (fast_open.verdict, fast_open.bumped()),
        (XDP_DROP, vec![Counter::QueryTcp4, Counter::TcpUnusual])
    );
    let client = connect(&mut harness);
    // Blind segments on the connection (a spoofer that saw no SYN-ACK guesses the
    // server's sequence number): dropped, whatever they carry.
    for (what, flags, ack) in [
        ("acknowledges before the SYN-ACK", ACK, SERVER_ISN),
        (
            "acknowledges what was never sent",
            ACK,
            SERVER_ISN.wrapping_add(2),
        ),
        ("far off", PSH_ACK, SERVER_ISN.wrapping_add(1 << 31)),
        ("FIN without ACK", FIN, 0),
        ("no flags", 0, 0),
    ] {
        let outcome = harness
            .run(&client_segment(flags, client, ack, &queries))
            .unwrap();
        assert_eq!(
            (outcome.verdict, outcome.bumped()),
            (XDP_DROP, vec![Counter::QueryTcp4, Counter::TcpBadAck]),
            "{what}"
        );
    }
    // A reset without ACK: the stack checks its sequence number itself.
    let reset = harness.run(&client_segment(RST, client, 0, &[])).unwrap();
    assert_eq!(reset.verdict, XDP_PASS);
    // A fragment of a TCP segment to a DNS port: dropped (no stack sends one).
    let mut first_fragment = client_segment(PSH_ACK, client, SERVER_ISN.wrapping_add(1), &queries);
    first_fragment[IP + 6] = 0x20;
    let outcome = harness.run(&first_fragment).unwrap();
    assert_eq!(
        (outcome.verdict, outcome.bumped()),
        (XDP_DROP, vec![Counter::QueryTcp4, Counter::TcpUnusual])
    );
    // The server resets the connection: its record goes, and so do later segments.
    harness
        .run_egress(&segment_out(
            RST | ACK,
            SERVER_ISN.wrapping_add(1),
            client,
            &[],
        ))
        .unwrap();
    let after_reset = harness
        .run(&client_segment(
            ACK,
            client,
            SERVER_ISN.wrapping_add(1),
            &[],
        ))
        .unwrap();
    assert_eq!(
        (after_reset.verdict, after_reset.bumped()),
        (XDP_DROP, vec![Counter::QueryTcp4, Counter::TcpUnsolicited])
    );
}

#[test]
fn each_query_is_charged_once_however_the_client_segments_the_stream() {
    let mut harness = harness(6);
    let mut seq = connect(&mut harness);
    // Three pipelined queries in one segment: three charges, not one.
    let three = framed_queries(3);
    let (verdict, charged, outcome) = send(&mut harness, seq, &three);
    assert_eq!((verdict, charged), (XDP_PASS, 3), "{:?}", outcome.bumped());
    assert_eq!(outcome.delta.get(Counter::TcpSegmentCharged), 1);
    seq = seq.wrapping_add(three.len() as u32);
    server_acks(&mut harness, seq);
    // One query split over two segments: charged where its length prefix is.
    let one = framed_queries(1);
    let (head, tail) = one.split_at(9);
    assert_eq!(send(&mut harness, seq, head).1, 1);
    seq = seq.wrapping_add(head.len() as u32);
    server_acks(&mut harness, seq);
    let (verdict, charged, _) = send(&mut harness, seq, tail);
    assert_eq!((verdict, charged), (XDP_PASS, 0));
    seq = seq.wrapping_add(tail.len() as u32);
    server_acks(&mut harness, seq);
    // A retransmission of acknowledged data: the stack discards it, so it is free.
    let first = CLIENT_ISN.wrapping_add(1);
    let (verdict, charged, _) = send(&mut harness, first, &three);
    assert_eq!((verdict, charged), (XDP_PASS, 0));
    // Two more fill the burst of six; a seventh is refused, and the stream does not
    // move past it: sent again, it is refused again (not a gap).
    let two = framed_queries(2);
    let (verdict, charged, _) = send(&mut harness, seq, &two);
    assert_eq!((verdict, charged), (XDP_PASS, 2));
    seq = seq.wrapping_add(two.len() as u32);
    server_acks(&mut harness, seq);
    for attempt in 0..2 {
        let (verdict, charged, outcome) = send(&mut harness, seq, &one);
        assert_eq!((verdict, charged), (XDP_DROP, 1), "attempt {attempt}");
        assert!(outcome.bumped().contains(&Counter::RateLimited));
    }
}

#[test]
fn data_the_server_has_not_acknowledged_is_charged_at_the_worst_case() {
    let mut harness = harness(100);
    let mut seq = connect(&mut harness);
    let one = framed_queries(1);
    let worst = u64::from(worst_case_messages(one.len() as u32));
    assert_eq!(send(&mut harness, seq, &one).1, 1);
    let first = seq;
    seq = seq.wrapping_add(one.len() as u32);
    // The next segment before the server acknowledged the first: the stack may have
    // dropped the first, so the boundaries XDP computed are not yet the server's.
    assert_eq!(send(&mut harness, seq, &one).1, worst);
    let second_end = seq.wrapping_add(one.len() as u32);
    // A segment beyond a gap: dropped until the gap is filled.
    let beyond = harness
        .run(&client_segment(
            PSH_ACK,
            second_end.wrapping_add(10),
            SERVER_ISN.wrapping_add(1),
            &one,
        ))
        .unwrap();
    assert_eq!(beyond.verdict, XDP_DROP);
    assert!(beyond.bumped().contains(&Counter::TcpOutOfOrder));
    // The first segment again, other bytes in it, before any acknowledgement: the
    // stack may keep either copy, so from now on every segment is charged at the worst
    // case, even after the server catches up.
    let mut other = framed_queries(2);
    other.truncate(one.len());
    assert_eq!(send(&mut harness, first, &other).1, worst);
    server_acks(&mut harness, second_end);
    assert_eq!(send(&mut harness, second_end, &one).1, worst);
}

#[test]
fn a_segment_cut_inside_a_length_prefix_loses_the_boundaries() {
    let mut harness = harness(100);
    let mut seq = connect(&mut harness);
    // One whole query and the first byte of the next one's length.
    let mut stream = framed_queries(2);
    let cut = framed_queries(1).len() + 1;
    let rest = stream.split_off(cut);
    assert_eq!(
        send(&mut harness, seq, &stream).1,
        u64::from(worst_case_messages(cut as u32))
    );
    seq = seq.wrapping_add(cut as u32);
    server_acks(&mut harness, seq);
    assert_eq!(
        send(&mut harness, seq, &rest).1,
        u64::from(worst_case_messages(rest.len() as u32))
    );
}

#[test]
fn a_segment_with_more_queries_than_the_burst_passes_only_into_a_full_bucket() {
    let mut harness = harness(2);
    let seq = connect(&mut harness);
    // Five queries against a burst of two: a segment cannot be split, so it passes
    // while the source has its whole burst, and the source owes the rest.
    let five = framed_queries(5);
    let (verdict, charged, _) = send(&mut harness, seq, &five);
    assert_eq!((verdict, charged), (XDP_PASS, 5));
    let next = seq.wrapping_add(five.len() as u32);
    server_acks(&mut harness, next);
    let (verdict, _, outcome) = send(&mut harness, next, &framed_queries(1));
    assert_eq!(verdict, XDP_DROP, "{:?}", outcome.bumped());
}
