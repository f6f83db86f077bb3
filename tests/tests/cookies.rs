//! DNS cookies checked in XDP, through BPF_PROG_TEST_RUN: a UDP query with a server
//! cookie one of the configured secrets made for its source, within the RFC 9018
//! window, passes every prefix level; a query with no cookie, a client cookie only, or a
//! forged, foreign, stale or malformed one is limited like any other, each outcome
//! counted. The cookies are made here with `dns_xdp_common::cookies`, which
//! `veth_cookies.rs` shows to agree with BIND's. Needs root.

use dns_xdp::Settings;
use dns_xdp::cookies::{kernel_secrets, parse_secrets};
use dns_xdp_common::Counter;
use dns_xdp_testkit::{
    packet::{
        CLIENT_COOKIE, Layer, SRC_V4, SRC_V6, build, dns_query, full_cookie, query_with_options,
    },
    testrun::{Harness, XDP_DROP, XDP_PASS},
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NEXT_SECRET: &str = "fedcba9876543210fedcba9876543210";

fn secret(hex: &str) -> [u8; 16] {
    parse_secrets(hex).unwrap()[0]
}

/// Now, in UNIX seconds.
fn now() -> u32 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_secs() as u32
}

fn v4_address() -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&SRC_V4.octets());
    addr
}

fn with_cookie(cookie: &[u8]) -> Vec<u8> {
    query_with_options(7, &[(10, cookie)])
}

fn v4(payload: Vec<u8>) -> Vec<u8> {
    build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(payload),
    ])
}

/// Limited to 1 query a minute per source (burst 1), no aggregate levels, cookies
/// checked against `secrets`.
fn harness(secrets: &[&str]) -> Harness {
    Harness::with(&Settings {
        rate: Some("1/min".parse().unwrap()),
        burst: 1,
        levels: dns_xdp::settings::Levels::None,
        sample: 0,
        cookie_secrets: secrets.iter().map(|hex| secret(hex)).collect(),
        ..Settings::default()
    })
    .unwrap()
}

fn verdicts(harness: &mut Harness, frame: &[u8], count: usize) -> Vec<u32> {
    (0..count)
        .map(|_| harness.run(frame).unwrap().verdict)
        .collect()
}

fn counter(harness: &mut Harness, counter: Counter) -> u64 {
    harness.programs().maps().counters().unwrap().get(counter)
}

#[test]
fn a_valid_cookie_passes_every_level_and_none_does_not() {
    let mut harness = harness(&[SECRET]);
    let plain = v4(dns_query(1, "example.com"));
    assert_eq!(
        verdicts(&mut harness, &plain, 3),
        [XDP_PASS, XDP_DROP, XDP_DROP]
    );
    let valid = v4(with_cookie(&full_cookie(
        &secret(SECRET),
        v4_address(),
        false,
        now(),
    )));
    assert_eq!(verdicts(&mut harness, &valid, 20), [XDP_PASS; 20]);
    // A client cookie alone proves nothing yet (a client's first query).
    let client_only = v4(with_cookie(&CLIENT_COOKIE));
    assert_eq!(verdicts(&mut harness, &client_only, 2), [XDP_DROP; 2]);
    assert_eq!(counter(&mut harness, Counter::CookieValid), 20);
    assert_eq!(counter(&mut harness, Counter::CookieNone), 3 + 2);
    assert_eq!(counter(&mut harness, Counter::RateLimited), 2 + 2);
    // The same for IPv6.
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&SRC_V6.octets());
    let valid_v6 = build(&[
        Layer::Eth,
        Layer::Ipv6,
        Layer::udp(53),
        Layer::Payload(with_cookie(&full_cookie(
            &secret(SECRET),
            addr,
            true,
            now(),
        ))),
    ]);
    let plain_v6 = build(&[
        Layer::Eth,
        Layer::Ipv6,
        Layer::udp(53),
        Layer::Payload(dns_query(2, "example.com")),
    ]);
    assert_eq!(verdicts(&mut harness, &plain_v6, 2), [XDP_PASS, XDP_DROP]);
    assert_eq!(verdicts(&mut harness, &valid_v6, 5), [XDP_PASS; 5]);
}

#[test]
fn forged_foreign_stale_and_malformed_cookies_are_limited_as_none() {
    let mut harness = harness(&[SECRET]);
    let key = secret(SECRET);
    // The burst goes first.
    assert_eq!(
        verdicts(&mut harness, &v4(dns_query(1, "example.com")), 1),
        [XDP_PASS]
    );
    let valid = full_cookie(&key, v4_address(), false, now());
    let mut forged = valid.clone();
    forged[23] ^= 1;
    let mut other_address = v4_address();
    other_address[3] ^= 1;
    let foreign_secret = full_cookie(&secret(NEXT_SECRET), v4_address(), false, now());
    let mut version_2 = valid.clone();
    version_2[8] = 2;
    let invalid: [(&str, Vec<u8>); 5] = [
        ("forged hash", forged),
        (
            "made for another address",
            full_cookie(&key, other_address, false, now()),
        ),
        ("another server's secret", foreign_secret),
        ("version 2", version_2),
        ("16 bytes, not 24", valid[..16].to_vec()),
    ];
    for (what, cookie) in &invalid {
        assert_eq!(
            verdicts(&mut harness, &v4(with_cookie(cookie)), 2),
            [XDP_DROP; 2],
            "{what}"
        );
    }
    let stale: [(&str, u32); 2] = [
        ("an hour and a second old", now() - 3601),
        ("301 s ahead", now() + 301),
    ];
    for (what, timestamp) in stale {
        let cookie = full_cookie(&key, v4_address(), false, timestamp);
        assert_eq!(
            verdicts(&mut harness, &v4(with_cookie(&cookie)), 2),
            [XDP_DROP; 2],
            "{what}"
        );
    }
    assert_eq!(counter(&mut harness, Counter::CookieInvalid), 10);
    assert_eq!(counter(&mut harness, Counter::CookieStale), 4);
    assert_eq!(counter(&mut harness, Counter::CookieValid), 0);
    // Within the window at both ends: valid.
    for timestamp in [now() - 3500, now() + 200] {
        let cookie = full_cookie(&key, v4_address(), false, timestamp);
        assert_eq!(
            verdicts(&mut harness, &v4(with_cookie(&cookie)), 1),
            [XDP_PASS]
        );
    }
}

#[test]
fn the_cookie_is_found_among_other_options_and_bad_records_are_no_cookie() {
    let mut harness = harness(&[SECRET]);
    let valid = full_cookie(&secret(SECRET), v4_address(), false, now());
    assert_eq!(
        verdicts(&mut harness, &v4(dns_query(1, "example.com")), 1),
        [XDP_PASS]
    );
    // After padding and an NSID request: found (three options before it at most).
    let padded = query_with_options(
        3,
        &[(12, &[0; 5]), (3, &[]), (8, &[0, 1, 24, 0]), (10, &valid)],
    );
    assert_eq!(verdicts(&mut harness, &v4(padded), 3), [XDP_PASS; 3]);
    // Fifth: past the walk, no cookie.
    let late = query_with_options(
        4,
        &[
            (12, &[0; 5]),
            (12, &[0; 1]),
            (3, &[]),
            (8, &[0, 1, 24, 0]),
            (10, &valid),
        ],
    );
    assert_eq!(verdicts(&mut harness, &v4(late), 1), [XDP_DROP]);
    // An option length running past the record, and a record cut short: no cookie,
    // nothing read out of bounds.
    let mut overlong = with_cookie(&valid);
    let at = overlong.len() - valid.len() - 2;
    overlong[at..at + 2].copy_from_slice(&200u16.to_be_bytes());
    let mut cut = with_cookie(&valid);
    cut.truncate(cut.len() - 10);
    // A compression pointer where the question name should be.
    let mut pointer = with_cookie(&valid);
    pointer[12..14].copy_from_slice(&[0xc0, 0x0c]);
    for (what, query) in [
        ("overlong option", overlong),
        ("cut", cut),
        ("pointer", pointer),
    ] {
        let verdict = harness.run(&v4(query)).unwrap().verdict;
        assert_eq!(verdict, XDP_DROP, "{what}");
    }
    assert_eq!(counter(&mut harness, Counter::CookieValid), 3);
    assert_eq!(
        counter(&mut harness, Counter::CookieInvalid) + counter(&mut harness, Counter::CookieNone),
        1 + 1 + 3
    );
}

/// Replaces the live secrets, as `dns-xdp set --cookie-secrets` does.
fn rotate(harness: &mut Harness, secrets: &[&str]) {
    let maps = harness.programs().maps_mut();
    let mut config = maps.config().unwrap();
    config.cookies = kernel_secrets(&secrets.iter().map(|hex| secret(hex)).collect::<Vec<_>>());
    maps.set_config(&config).unwrap();
}

#[test]
fn a_rotation_keeps_old_cookies_until_their_secret_is_dropped() {
    let mut harness = harness(&[SECRET]);
    let old = v4(with_cookie(&full_cookie(
        &secret(SECRET),
        v4_address(),
        false,
        now(),
    )));
    let new = v4(with_cookie(&full_cookie(
        &secret(NEXT_SECRET),
        v4_address(),
        false,
        now(),
    )));
    assert_eq!(
        verdicts(&mut harness, &v4(dns_query(1, "example.com")), 1),
        [XDP_PASS]
    );
    assert_eq!(verdicts(&mut harness, &old, 3), [XDP_PASS; 3]);
    assert_eq!(verdicts(&mut harness, &new, 2), [XDP_DROP; 2]);
    // The new secret first, the old one kept: both pass.
    rotate(&mut harness, &[NEXT_SECRET, SECRET]);
    assert_eq!(verdicts(&mut harness, &new, 3), [XDP_PASS; 3]);
    assert_eq!(verdicts(&mut harness, &old, 3), [XDP_PASS; 3]);
    // The old one dropped: its cookies are forged now.
    rotate(&mut harness, &[NEXT_SECRET]);
    assert_eq!(verdicts(&mut harness, &old, 2), [XDP_DROP; 2]);
    assert_eq!(verdicts(&mut harness, &new, 2), [XDP_PASS; 2]);
    // No secret: no check, nothing counted.
    rotate(&mut harness, &[]);
    let checked =
        counter(&mut harness, Counter::CookieValid) + counter(&mut harness, Counter::CookieInvalid);
    assert_eq!(verdicts(&mut harness, &new, 2), [XDP_DROP; 2]);
    assert_eq!(
        counter(&mut harness, Counter::CookieValid) + counter(&mut harness, Counter::CookieInvalid),
        checked
    );
}
