//! Sampled queries under BPF_PROG_TEST_RUN: each crafted query's sample carries exactly
//! its decision, name, type and name status; one in N per decision; none when off; the
//! per-second cap holds over a million packets. Needs root.

use std::time::Instant;

use dns_xdp::{
    Settings,
    samples::{Sample, SampleReader},
    settings::{Levels, Rate},
};
use dns_xdp_common::{Counter, samples::Decision};
use dns_xdp_testkit::{
    packet::{Layer, build, dns_query},
    testrun::{Harness, XDP_DROP, XDP_PASS},
};

fn udp_query(payload: Vec<u8>) -> Vec<u8> {
    build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(payload),
    ])
}

/// A query for `name` (presentation labels) of type `qtype`.
fn query(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut payload = dns_query(0x4242, "x");
    payload.truncate(12);
    payload.extend_from_slice(name);
    payload.extend(qtype.to_be_bytes());
    payload.extend([0, 1]);
    payload
}

fn wire(name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for label in name.split('.').filter(|label| !label.is_empty()) {
        bytes.push(label.len() as u8);
        bytes.extend(label.as_bytes());
    }
    bytes.push(0);
    bytes
}

/// A crafted query and its sample: what, the payload, the verdict, the decision, the
/// name, its status, the type, the level.
type Case<'a> = (
    &'a str,
    Vec<u8>,
    u32,
    Decision,
    Option<String>,
    &'a str,
    Option<&'a str>,
    Option<u8>,
);

fn sampling(every: u32, cap: &str) -> Settings {
    Settings {
        ports: vec![53],
        rate: Some("1/min".parse().unwrap()),
        burst: 1,
        levels: Levels::None,
        sample: every,
        sample_cap: cap.parse::<Rate>().unwrap(),
        ..Settings::default()
    }
}

fn one_sample(harness: &mut Harness, reader: &mut SampleReader, frame: &[u8]) -> (u32, Sample) {
    let outcome = harness.run(frame).unwrap();
    let mut samples = reader.read();
    assert_eq!(samples.len(), 1, "one sample per query: {samples:?}");
    assert_eq!(outcome.delta.get(Counter::SamplesTaken), 1);
    (outcome.verdict, samples.remove(0))
}

#[test]
fn samples_carry_exactly_the_decision_name_and_type_of_crafted_queries() {
    let mut settings = sampling(1, "100000/s");
    settings.deny = vec!["198.18.0.2/32".parse().unwrap()];
    let mut harness = Harness::with(&settings).unwrap();
    let mut reader = harness.programs().take_samples().unwrap();
    // Denied: the test kit's source is on the deny list.
    let (verdict, sample) = one_sample(
        &mut harness,
        &mut reader,
        &udp_query(query(&wire("www.example.com"), 255)),
    );
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(sample.decision, Some(Decision::Denied));
    assert_eq!(sample.name.as_deref(), Some("www.example.com."));
    assert_eq!(sample.qtype.as_deref(), Some("ANY"));
    assert_eq!(sample.source.to_string(), "198.18.0.2");
    assert_eq!(sample.id, Some(0x4242));

    let mut harness = Harness::with(&sampling(1, "100000/s")).unwrap();
    let mut reader = harness.programs().take_samples().unwrap();
    // 127 labels: 255 bytes, the longest legal name, whole; then one over: cut.
    let longest = ["a"; 127].join(".");
    let over = format!(
        "{}.{}",
        ["b"; 3].map(|_| "x".repeat(63)).join("."),
        "y".repeat(63)
    );
    let pointer = [&[3u8, b'w', b'w', b'w'][..], &[0xc0, 12]].concat();
    let cases: [Case; 5] = [
        (
            "first query admitted",
            query(&wire("a.example.org"), 16),
            XDP_PASS,
            Decision::Admitted,
            Some("a.example.org.".into()),
            "complete",
            Some("TXT"),
            None,
        ),
        (
            "second refused by level 0",
            query(&wire("b.example.org"), 28),
            XDP_DROP,
            Decision::Limited,
            Some("b.example.org.".into()),
            "complete",
            Some("AAAA"),
            Some(0),
        ),
        (
            "the longest name, whole",
            query(&wire(&longest), 12),
            XDP_DROP,
            Decision::Limited,
            Some(format!("{longest}.")),
            "complete",
            Some("PTR"),
            Some(0),
        ),
        (
            "a name over 255 bytes, cut at its last whole label",
            query(&wire(&over), 1),
            XDP_DROP,
            Decision::Limited,
            Some(format!("{}.", vec!["x".repeat(63); 3].join("."))),
            "truncated",
            None,
            Some(0),
        ),
        (
            "a compression pointer, not followed",
            query(&pointer, 1),
            XDP_DROP,
            Decision::Limited,
            Some("www.".into()),
            "compressed",
            None,
            Some(0),
        ),
    ];
    for (what, payload, verdict, decision, name, status, qtype, level) in cases {
        let (got, sample) = one_sample(&mut harness, &mut reader, &udp_query(payload));
        assert_eq!(got, verdict, "{what}");
        assert_eq!(sample.decision, Some(decision), "{what}");
        assert_eq!(sample.name, name, "{what}");
        assert_eq!(sample.name_status, status, "{what}");
        assert_eq!(sample.qtype.as_deref(), qtype, "{what}");
        assert_eq!(sample.level, level, "{what}");
        assert_eq!(sample.prefix.to_string(), "198.18.0.2/32", "{what}");
    }
    // A response aimed at the server port: not a query, and no question decoded as one.
    let mut response = query(&wire("c.example.org"), 1);
    response[2] |= 0x80;
    let (verdict, sample) = one_sample(&mut harness, &mut reader, &udp_query(response));
    assert_eq!(
        (verdict, sample.decision),
        (XDP_DROP, Some(Decision::NotQuery))
    );
}

#[test]
fn one_in_n_per_decision_and_none_when_off() {
    let mut harness = Harness::with(&sampling(10, "100000/s")).unwrap();
    let mut reader = harness.programs().take_samples().unwrap();
    let frame = udp_query(query(&wire("n.example.org"), 1));
    // The first query is admitted, the next 99 refused: one in ten of each decision,
    // the first of each ten.
    for _ in 0..100 {
        harness.run(&frame).unwrap();
    }
    let samples = reader.read();
    let limited = samples
        .iter()
        .filter(|s| s.decision == Some(Decision::Limited))
        .count();
    let admitted = samples
        .iter()
        .filter(|s| s.decision == Some(Decision::Admitted))
        .count();
    assert_eq!((admitted, limited), (1, 10), "{samples:?}");

    let mut harness = Harness::with(&sampling(0, "100000/s")).unwrap();
    let mut reader = harness.programs().take_samples().unwrap();
    for _ in 0..100 {
        let outcome = harness.run(&frame).unwrap();
        assert_eq!(outcome.delta.get(Counter::SamplesTaken), 0);
    }
    assert!(reader.read().is_empty());
}

#[test]
fn the_cap_holds_over_a_million_packets() {
    const PACKETS: u32 = 1_000_000;
    let mut harness = Harness::with(&sampling(1, "1000/s")).unwrap();
    let mut reader = harness.programs().take_samples().unwrap();
    let frame = udp_query(query(&wire("flood.example.org"), 1));
    let before = harness.programs().maps().counters().unwrap();
    let started = Instant::now();
    let (verdict, _) = harness
        .run_program(dns_xdp::programs::XDP_PROGRAM, &frame, PACKETS)
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.programs().maps().counters().unwrap();
    let delta = |counter| after.get(counter) - before.get(counter);
    assert_eq!(verdict, XDP_DROP);
    let taken = delta(Counter::SamplesTaken);
    let lost = delta(Counter::SamplesLost);
    let capped = delta(Counter::SamplesCapped);
    // Burst of one second's worth, then the rate, over the run's wall time.
    let bound = 1000.0 + 1000.0 * elapsed + 1.0;
    println!(
        "{PACKETS} packets in {elapsed:.3} s: {taken} samples taken, {lost} lost, {capped} capped (bound {bound:.0})"
    );
    assert!(
        (taken + lost) as f64 <= bound,
        "{taken} + {lost} over {bound}"
    );
    assert!(taken >= 1000, "the burst is sampled: {taken}");
    assert_eq!(taken + lost + capped, u64::from(PACKETS));
    assert_eq!(reader.read().len() as u64, taken);
}
