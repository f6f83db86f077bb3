//! Proven sources, through BPF_PROG_TEST_RUN: a client proves its address by a TCP
//! exchange with the server (the egress program sees the server send it data) or by a
//! valid DNS cookie; over the server budget, proven clients are served first. Under a
//! flood spoofed over the whole IPv4 space at ten times the budget (no prefix level
//! concentrates it: only the budget acts) proven clients keep their answers while
//! clients that never proved lose theirs; a new client is slipped (TC=1), connects
//! (SYNs are not charged to the budget), is answered over TCP and then served over UDP.
//! Spoofed TCP proves nothing; proofs expire. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use dns_xdp::Settings;
use dns_xdp::cookies::parse_secrets;
use dns_xdp::programs::XDP_PROGRAM;
use dns_xdp::settings::Levels;
use dns_xdp_common::{Counter, EgressCounter, NS_PER_SEC};
use dns_xdp_testkit::{
    packet::{
        Layer, SRC_V4, build, client_segment, full_cookie, query_v4_from, query_v6_from,
        query_with_options, server_segment_to,
    },
    testrun::{Harness, XDP_DROP, XDP_PASS, XDP_TX},
};

const IP: usize = 14;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// TCP flags.
const SYN: u8 = 0x02;
const PSH_ACK: u8 = 0x18;
/// A DNS answer behind its 2-byte length, as a TCP segment carries it.
const FRAMED_ANSWER: [u8; 14] = [0, 12, 0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];

fn counter(harness: &mut Harness, counter: Counter) -> u64 {
    harness.programs().maps().counters().unwrap().get(counter)
}

/// Runs the XDP program once on `frame`: its verdict (no counters read: fast enough to
/// offer floods at a steady rate).
fn verdict(harness: &mut Harness, frame: &[u8]) -> u32 {
    harness.run_program(XDP_PROGRAM, frame, 1).unwrap().0
}

/// Proves `client` the way a TCP exchange does: the server sends it an answer.
/// Returns the egress program's `proved_tcp` count for it (1 when written).
fn prove_over_tcp(harness: &mut Harness, client: IpAddr) -> u64 {
    let sent = harness
        .run_egress(&server_segment_to(client, PSH_ACK, &FRAMED_ANSWER))
        .unwrap();
    sent.get(EgressCounter::ProvedTcp)
}

/// A UDP query from `client` carrying a valid server cookie made with `SECRET` now.
fn query_with_valid_cookie(client: Ipv4Addr) -> Vec<u8> {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&client.octets());
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_secs() as u32;
    let secret = parse_secrets(SECRET).unwrap()[0];
    let cookie = full_cookie(&secret, addr, false, now);
    let frame = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(query_with_options(9, &[(10, &cookie)])),
    ]);
    from(&frame, client)
}

/// Sources spread over the whole IPv4 unicast space (xorshift64*), never in
/// 198.18.0.0/15 where the test's clients are.
struct SpoofedSources(u64);

impl SpoofedSources {
    fn next_word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next(&mut self) -> Ipv4Addr {
        loop {
            let addr = Ipv4Addr::from((self.next_word() >> 32) as u32);
            let [a, b, ..] = addr.octets();
            if !(a == 0 || a == 127 || a >= 224 || (a == 198 && (b & 0xfe) == 18)) {
                return addr;
            }
        }
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_word() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// A frame of `template` from `src` (IPv4, no options).
fn from(template: &[u8], src: Ipv4Addr) -> Vec<u8> {
    let mut frame = template.to_vec();
    frame[IP + 12..IP + 16].copy_from_slice(&src.octets());
    frame
}

/// Per-source 100/s (burst 100) with the automatic levels (/24 at 400/s, /16 at
/// 3 200/s), a budget of 500/s (burst 50), cookies checked.
fn flood_settings() -> Settings {
    Settings {
        rate: Some("100/s".parse().unwrap()),
        burst: 100,
        levels: Levels::Auto,
        budget: Some("500/s".parse().unwrap()),
        cookie_secrets: parse_secrets(SECRET).unwrap(),
        sample: 0,
        ..Settings::default()
    }
}

#[test]
fn proven_clients_keep_their_answers_under_a_random_source_flood_at_ten_times_the_budget() {
    const BUDGET: f64 = 500.0;
    const FLOOD_RATE: f64 = 5_000.0;
    /// Queries per second from each client, proven or not.
    const CLIENT_RATE: f64 = 10.0;
    const RUN: Duration = Duration::from_secs(3);
    let mut harness = Harness::with(&flood_settings()).unwrap();
    let proven: Vec<Ipv4Addr> = (1..=10)
        .map(|host| Ipv4Addr::new(198, 18, 10, host))
        .collect();
    let unproven: Vec<Ipv4Addr> = (1..=10)
        .map(|host| Ipv4Addr::new(198, 18, 20, host))
        .collect();
    // Half prove themselves over TCP, half with a DNS cookie, before the flood.
    for &client in &proven[..5] {
        assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 1);
    }
    for &client in &proven[5..] {
        assert_eq!(
            verdict(&mut harness, &query_with_valid_cookie(client)),
            XDP_PASS
        );
    }
    assert_eq!(counter(&mut harness, Counter::ProvedCookie), 5);
    let before = harness.programs().maps().counters().unwrap();

    let template = query_v4_from(SRC_V4);
    let mut spoofed = SpoofedSources(0x9e37_79b9_7f4a_7c15);
    let (mut flood_sent, mut flood_passed) = (0u64, 0u64);
    // Per client group: sent, answered (XDP_PASS), slipped (XDP_TX).
    let mut groups = [[0u64; 3]; 2];
    // Each stream sends when its next query is due, at random (Poisson) intervals, as
    // real traffic arrives: with fixed periods every refill of the budget would fall
    // on a flood query's instant and the clients would never find one.
    let mut jitter = SpoofedSources(0x2545_f491);
    let mut interval = |rate: f64| -> f64 { -jitter.uniform().ln() / rate };
    let (mut flood_due, mut client_due) = (interval(FLOOD_RATE), interval(CLIENT_RATE * 20.0));
    let started = Instant::now();
    let mut client_turn = 0u64;
    while started.elapsed() < RUN {
        let elapsed = started.elapsed().as_secs_f64();
        if flood_due.min(client_due) > elapsed {
            std::thread::sleep(Duration::from_micros(50));
        } else if flood_due <= client_due {
            let frame = from(&template, spoofed.next());
            flood_passed += u64::from(verdict(&mut harness, &frame) == XDP_PASS);
            flood_sent += 1;
            flood_due += interval(FLOOD_RATE);
        } else {
            let index = (client_turn / 2 % 10) as usize;
            let (group, client) = if client_turn.is_multiple_of(2) {
                (0, proven[index])
            } else {
                (1, unproven[index])
            };
            let outcome = verdict(&mut harness, &from(&template, client));
            groups[group][0] += 1;
            groups[group][1] += u64::from(outcome == XDP_PASS);
            groups[group][2] += u64::from(outcome == XDP_TX);
            client_turn += 1;
            client_due += interval(CLIENT_RATE * 20.0);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = harness.programs().maps().counters().unwrap();
    let delta = |counter| after.get(counter) - before.get(counter);
    let [proven_run, unproven_run] = groups;
    println!(
        "{seconds:.2} s: flood {flood_sent} ({:.0}/s, {flood_passed} passed); proven clients \
         {}/{} answered; unproven {}/{} answered, {} slipped; served proven {}, unproven {}; \
         slipped {}, slip capped {}; shed heavy {}",
        flood_sent as f64 / seconds,
        proven_run[1],
        proven_run[0],
        unproven_run[1],
        unproven_run[0],
        unproven_run[2],
        delta(Counter::BudgetServedProven),
        delta(Counter::BudgetServedUnproven),
        delta(Counter::BudgetSlipped),
        delta(Counter::SlipCapped),
        delta(Counter::BudgetShedHeavy),
    );
    assert!(
        flood_sent as f64 / seconds >= 9.0 * BUDGET,
        "the flood ran at (about) ten times the budget"
    );
    // No prefix level fired: only the budget stood between the flood and the server.
    assert_eq!(delta(Counter::RateLimited), 0);
    assert!(
        proven_run[1] * 100 >= proven_run[0] * 99,
        "at least 99 % of the proven clients' queries answered: {proven_run:?}"
    );
    // The control: the same clients, never proven, get what the flood leaves them.
    assert!(
        unproven_run[1] * 2 < unproven_run[0],
        "clients that never proved lose most of theirs: {unproven_run:?}"
    );
    assert!(
        unproven_run[2] > 0,
        "some of their shed queries were slipped"
    );
    // The budget held: all admitted together within its rate and tiers' bursts (plus
    // the credit CPUs may hold).
    let admitted = flood_passed + proven_run[1] + unproven_run[1];
    assert!(
        admitted as f64 <= BUDGET * seconds + 3.0 * 50.0 + 64.0,
        "{admitted} admitted in {seconds:.2} s"
    );
    assert!(delta(Counter::BudgetServedProven) >= proven_run[1] * 9 / 10);
    assert!(delta(Counter::BudgetShedLight) > flood_sent / 2);
    assert_eq!(delta(Counter::BudgetShedProven), 0);
}

/// A budget of one query an hour (nothing refills during the test) with a burst of 4;
/// per source 1 000/s.
fn spent_budget_settings() -> Settings {
    Settings {
        rate: Some("1000/s".parse().unwrap()),
        burst: 1000,
        levels: Levels::None,
        budget: Some("1/hour".parse().unwrap()),
        budget_burst: Some(4),
        sample: 0,
        ..Settings::default()
    }
}

/// Spends the budget (light tier and all) with queries from spoofed sources; returns
/// how many passed.
fn spend_budget(harness: &mut Harness) -> u64 {
    let template = query_v4_from(SRC_V4);
    let mut spoofed = SpoofedSources(7);
    let passed = (0..40)
        .filter(|_| verdict(harness, &from(&template, spoofed.next())) == XDP_PASS)
        .count() as u64;
    assert_eq!(
        verdict(harness, &from(&template, spoofed.next())),
        XDP_TX,
        "over budget, an unproven query is slipped"
    );
    passed
}

#[test]
fn a_new_client_is_slipped_connects_is_answered_over_tcp_and_then_served_over_udp() {
    let mut harness = Harness::with(&spent_budget_settings()).unwrap();
    // Burst 4, and the light tier's reserve of 4 more: eight at one instant.
    assert_eq!(spend_budget(&mut harness), 8);
    let client = Ipv4Addr::new(198, 18, 30, 7);
    // A UDP query: shed by the budget, answered with TC=1 (the reply is the frame the
    // program left: from port 53 back to the client, TC set).
    let (action, reply) = harness.run_and_read(&query_v4_from(client)).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(
        reply[IP + 16..IP + 20],
        client.octets(),
        "sent back to the client"
    );
    assert_eq!(reply[IP + 28 + 2] & 0x82, 0x82, "QR and TC set");
    // Its connection attempt passes however spent the budget (SYNs are not charged).
    let shed_before = counter(&mut harness, Counter::BudgetShedLight);
    let mut syn = client_segment(SYN, 1000, 0, &[]);
    syn[IP + 12..IP + 16].copy_from_slice(&client.octets());
    assert_eq!(verdict(&mut harness, &syn), XDP_PASS);
    assert_eq!(counter(&mut harness, Counter::BudgetShedLight), shed_before);
    // The server answers it over TCP: the handshake completed, the client is proven.
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 1);
    // Answered twice more within the proof's half-life: no rewrite.
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 0);
    // Its UDP queries are now served from the proven tier (its reserve: one burst more,
    // four), while unproven ones are still shed; past the reserve even a proven query
    // is shed, and dropped (a slip would send it to TCP for nothing).
    let served = (0..4)
        .filter(|_| verdict(&mut harness, &query_v4_from(client)) == XDP_PASS)
        .count();
    assert_eq!(served, 4);
    assert_eq!(counter(&mut harness, Counter::BudgetServedProven), 4);
    assert_eq!(verdict(&mut harness, &query_v4_from(client)), XDP_DROP);
    assert_eq!(counter(&mut harness, Counter::BudgetShedProven), 1);
    assert_eq!(
        verdict(&mut harness, &query_v4_from(Ipv4Addr::new(198, 18, 31, 1))),
        XDP_TX
    );
    assert_eq!(harness.programs().maps().proven_sources().unwrap(), 1);
}

#[test]
fn an_ipv6_client_proves_itself_at_its_prefix() {
    let mut harness = Harness::with(&spent_budget_settings()).unwrap();
    spend_budget(&mut harness);
    let client: Ipv6Addr = "2001:2:0:40::7".parse().unwrap();
    assert_ne!(verdict(&mut harness, &query_v6_from(client)), XDP_PASS);
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V6(client)), 1);
    assert_eq!(verdict(&mut harness, &query_v6_from(client)), XDP_PASS);
    // The per-source prefix is a /64 by default: a neighbour in it shares the proof, one
    // in the next /64 does not.
    let same_64: Ipv6Addr = "2001:2:0:40::8".parse().unwrap();
    let next_64: Ipv6Addr = "2001:2:0:41::7".parse().unwrap();
    assert_eq!(verdict(&mut harness, &query_v6_from(same_64)), XDP_PASS);
    assert_ne!(verdict(&mut harness, &query_v6_from(next_64)), XDP_PASS);
}

#[test]
fn spoofed_tcp_proves_nothing() {
    let mut harness = Harness::with(&spent_budget_settings()).unwrap();
    spend_budget(&mut harness);
    let victim = Ipv4Addr::new(198, 18, 32, 9);
    // An attacker spoofing the victim's address: SYNs pass (the stack answers with a
    // SYN-ACK the attacker never sees), ACKs and data of no accepted connection are
    // dropped. None of it proves the address.
    for (flags, payload) in [
        (SYN, &[][..]),
        (0x10, &[][..]),
        (PSH_ACK, &FRAMED_ANSWER[..]),
    ] {
        let mut segment = client_segment(flags, 1000, 5000, payload);
        segment[IP + 12..IP + 16].copy_from_slice(&victim.octets());
        let expected = if flags == SYN { XDP_PASS } else { XDP_DROP };
        assert_eq!(
            verdict(&mut harness, &segment),
            expected,
            "flags {flags:#x}"
        );
    }
    // The server's SYN-ACK leaves (egress): no data, no proof.
    assert_eq!(
        harness
            .run_egress(&server_segment_to(IpAddr::V4(victim), 0x12, &[]))
            .unwrap()
            .get(EgressCounter::ProvedTcp),
        0
    );
    assert_eq!(verdict(&mut harness, &query_v4_from(victim)), XDP_TX);
    assert_eq!(harness.programs().maps().proven_sources().unwrap(), 0);
    assert_eq!(counter(&mut harness, Counter::BudgetServedProven), 0);
}

#[test]
fn a_proof_expires_and_none_is_recorded_with_proofs_off() {
    let mut harness = Harness::with(&Settings {
        proof_ttl: 1,
        ..spent_budget_settings()
    })
    .unwrap();
    spend_budget(&mut harness);
    let client = Ipv4Addr::new(198, 18, 33, 1);
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 1);
    assert_eq!(verdict(&mut harness, &query_v4_from(client)), XDP_PASS);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(harness.programs().maps().proven_sources().unwrap(), 0);
    assert_eq!(verdict(&mut harness, &query_v4_from(client)), XDP_TX);
    // `set --proof-ttl 0`: nothing is recorded any more.
    let mut config = harness.programs().maps().config().unwrap();
    config.proof_ttl_ns = 0;
    harness.programs().maps_mut().set_config(&config).unwrap();
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 0);
    assert_eq!(verdict(&mut harness, &query_v4_from(client)), XDP_TX);
    // Set back: recorded again.
    let mut config = harness.programs().maps().config().unwrap();
    config.proof_ttl_ns = 60 * NS_PER_SEC;
    harness.programs().maps_mut().set_config(&config).unwrap();
    assert_eq!(prove_over_tcp(&mut harness, IpAddr::V4(client)), 1);
    assert_eq!(verdict(&mut harness, &query_v4_from(client)), XDP_PASS);
}

#[test]
fn without_budget_slip_the_budget_drops_what_it_sheds() {
    let mut harness = Harness::with(&Settings {
        budget_slip: false,
        ..spent_budget_settings()
    })
    .unwrap();
    let template = query_v4_from(SRC_V4);
    let mut spoofed = SpoofedSources(7);
    let verdicts: Vec<u32> = (0..12)
        .map(|_| verdict(&mut harness, &from(&template, spoofed.next())))
        .collect();
    assert_eq!(verdicts[..8], [XDP_PASS; 8]);
    assert_eq!(verdicts[8..], [XDP_DROP; 4]);
    assert_eq!(counter(&mut harness, Counter::BudgetSlipped), 0);
}
