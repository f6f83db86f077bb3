//! DNS cookies (RFC 7873, RFC 9018) across a veth pair: BIND 9 in the server namespace
//! hands out server cookies made with a known secret, and `dig +cookie` in the client
//! namespace sends them back. dns-xdp's cookie arithmetic (`dns_xdp_common::cookies`,
//! the secret file parser `dns_xdp::cookies`) must reproduce every server cookie BIND
//! makes, across a secret rotation; and dns-xdp in front of BIND, given the same secret,
//! exempts queries carrying BIND's cookies from a limit of 1/min, across a rotation done
//! live with `dns-xdp set`. Needs root, BIND and dig (`cargo xtask setup`).

use std::net::{IpAddr, Ipv4Addr};

use dns_xdp_common::{address_words, cookie_fresh, cookie_hash, secret_key};
use dns_xdp_testkit::{
    dig::{CookieNote, DigCookie, dig_cookie},
    loader::{self, BpfFs, Loader},
    netns::{CLIENT_V4, LINK, Pair, SERVER_V4},
    process::ScratchDir,
    servers::{CookieSeen, EXAMPLE_ZONE, bind_queries, example_zone, start_bind},
};

/// The secret BIND makes its server cookies with (SipHash-2-4 takes 128 bits).
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The secret it rotates to.
const NEXT_SECRET: &str = "fedcba9876543210fedcba9876543210";

/// Whether `secret` (as BIND's configuration spells it) made the server cookie of
/// `cookie` for the client at `CLIENT_V4`, by dns-xdp's arithmetic; and the cookie's
/// timestamp.
fn made_with(secret: &str, cookie: &DigCookie) -> (bool, u32) {
    let bytes = |hex: &str| -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
            .collect()
    };
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap());
    let (client, server) = (bytes(cookie.client()), bytes(cookie.server()));
    assert_eq!((client.len(), server.len()), (8, 16), "{cookie:?}");
    let secrets = dns_xdp::cookies::parse_secrets(&format!("cookie-secret \"{secret}\";")).unwrap();
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&CLIENT_V4.parse::<Ipv4Addr>().unwrap().octets());
    let hash = cookie_hash(
        &secret_key(&secrets[0]),
        word(&client),
        word(&server[..8]),
        address_words(&addr),
        false,
    );
    let timestamp = u32::from_be_bytes(server[4..8].try_into().unwrap());
    (hash == word(&server[8..]), timestamp)
}

/// Now, in UNIX seconds.
fn now() -> u32 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_secs() as u32
}

#[test]
fn bind_hands_out_cookies_and_accepts_them_back() {
    let pair = Pair::new().expect("creating namespaces");
    let dir = ScratchDir::new("bind").unwrap();
    let bind_dir = dir.path().join("bind");
    let _bind = start_bind(
        &pair.server,
        SERVER_V4,
        &[(EXAMPLE_ZONE, &example_zone())],
        &[SECRET],
        &bind_dir,
    )
    .expect("starting BIND");
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let name = format!("www.{EXAMPLE_ZONE}");

    let first = dig_cookie(&pair.client, server, &name, None).expect("running dig");
    println!("without a server cookie: {first:?}");
    assert!(first.answered(), "{first:?}");
    let cookie = first.cookie.expect("a COOKIE in BIND's answer");
    assert_eq!(cookie.note, CookieNote::Good);
    // 8 bytes of client cookie, 16 of server cookie: version 1, 3 reserved, a 4-byte
    // timestamp, an 8-byte SipHash-2-4 (RFC 9018).
    assert_eq!(cookie.hex.len(), 48, "{cookie:?}");
    assert!(cookie.server().starts_with("01000000"), "{cookie:?}");
    // dns-xdp computes the same cookie from the same secret, and it is fresh.
    let (made, timestamp) = made_with(SECRET, &cookie);
    assert!(
        made,
        "dns-xdp's SipHash-2-4 does not reproduce BIND's cookie {cookie:?}"
    );
    assert!(
        cookie_fresh(timestamp, now()),
        "timestamp {timestamp}, now {}",
        now()
    );
    assert!(!made_with(NEXT_SECRET, &cookie).0);

    let second = dig_cookie(&pair.client, server, &name, Some(&cookie.hex)).expect("running dig");
    println!("with it sent back: {second:?}");
    assert!(second.answered(), "{second:?}");
    let echoed = second.cookie.expect("a COOKIE in BIND's answer");
    assert_eq!(echoed.note, CookieNote::Good);
    assert_eq!(echoed.client(), cookie.client());
    assert_eq!(echoed.hex.len(), 48);

    // A server cookie one bit off: answered all the same (`require-server-cookie no`),
    // and BIND says it did not verify it.
    let mut forged = cookie.hex.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let third = dig_cookie(&pair.client, server, &name, Some(&forged)).expect("running dig");
    assert!(third.answered(), "{third:?}");

    let logged = bind_queries(&bind_dir).expect("reading BIND's query log");
    let from_client: Vec<_> = logged
        .iter()
        .filter(|query| query.client.to_string() == CLIENT_V4)
        .collect();
    println!("BIND's query log: {from_client:?}");
    let seen: Vec<CookieSeen> = from_client.iter().map(|query| query.cookie).collect();
    assert_eq!(
        seen,
        [
            CookieSeen::Unverified,
            CookieSeen::Verified,
            CookieSeen::Unverified
        ]
    );
    assert!(from_client.iter().all(|query| query.name == name));
}

#[test]
fn after_a_rotation_old_cookies_still_verify_and_new_ones_use_the_new_secret() {
    let pair = Pair::new().expect("creating namespaces");
    let dir = ScratchDir::new("bind-rotation").unwrap();
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let name = format!("www.{EXAMPLE_ZONE}");
    let old = {
        let _bind = start_bind(
            &pair.server,
            SERVER_V4,
            &[(EXAMPLE_ZONE, &example_zone())],
            &[SECRET],
            &dir.path().join("before"),
        )
        .expect("starting BIND");
        let first = dig_cookie(&pair.client, server, &name, None).expect("running dig");
        first.cookie.expect("a COOKIE in BIND's answer")
    };
    assert!(made_with(SECRET, &old).0, "{old:?}");
    // The rotation as an operator does it: the new secret first, the old one kept.
    let rotated_dir = dir.path().join("after");
    let _bind = start_bind(
        &pair.server,
        SERVER_V4,
        &[(EXAMPLE_ZONE, &example_zone())],
        &[NEXT_SECRET, SECRET],
        &rotated_dir,
    )
    .expect("starting BIND with both secrets");
    let again = dig_cookie(&pair.client, server, &name, Some(&old.hex)).expect("running dig");
    assert!(again.answered(), "{again:?}");
    let new = again.cookie.expect("a COOKIE in BIND's answer");
    // BIND accepted the old cookie and answered with one made with the new secret,
    // which dns-xdp's arithmetic finds too.
    let logged = bind_queries(&rotated_dir).expect("reading BIND's query log");
    let seen: Vec<CookieSeen> = logged
        .iter()
        .filter(|query| query.client.to_string() == CLIENT_V4)
        .map(|query| query.cookie)
        .collect();
    assert_eq!(seen, [CookieSeen::Verified]);
    assert_eq!(new.client(), old.client());
    assert!(made_with(NEXT_SECRET, &new).0, "{new:?}");
    assert!(!made_with(SECRET, &new).0, "{new:?}");
}

/// How many of `count` dig queries (one try each) sending `cookie` were answered.
fn answered(pair: &Pair, name: &str, cookie: Option<&str>, count: usize) -> usize {
    let server: IpAddr = SERVER_V4.parse().unwrap();
    (0..count)
        .filter(|_| {
            dig_cookie(&pair.client, server, name, cookie)
                .expect("running dig")
                .answered()
        })
        .count()
}

/// A secrets file in `dir` as an operator writes it from BIND's configuration.
fn secrets_file(dir: &std::path::Path, file: &str, secrets: &[&str]) -> String {
    let path = dir.join(file);
    let text: String = secrets
        .iter()
        .map(|secret| format!("cookie-secret \"{secret}\";\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn dns_xdp_exempts_the_cookies_bind_makes_from_the_limits_across_a_live_rotation() {
    let pair = Pair::new().expect("creating namespaces");
    let dir = ScratchDir::new("bind-xdp").unwrap();
    let name = format!("www.{EXAMPLE_ZONE}");
    let server: IpAddr = SERVER_V4.parse().unwrap();
    let bind = start_bind(
        &pair.server,
        SERVER_V4,
        &[(EXAMPLE_ZONE, &example_zone())],
        &[SECRET],
        &dir.path().join("bind"),
    )
    .expect("starting BIND");
    let bpffs = BpfFs::new().unwrap();
    let first_secrets = secrets_file(dir.path(), "secrets", &[SECRET]);
    let loader = Loader::attach_pinned(
        &pair.server,
        &bpffs,
        &[
            "--rate",
            "1/min",
            "--burst",
            "1",
            "--levels",
            "none",
            "--cookie-secrets",
            &first_secrets,
        ],
    )
    .expect("attaching");

    // The burst answers the first query, which brings BIND's cookie back; without a
    // server cookie the next one is dropped, with it every one is answered.
    let first = dig_cookie(&pair.client, server, &name, None).expect("running dig");
    assert!(first.answered(), "{first:?}");
    let old = first.cookie.expect("a COOKIE in BIND's answer").hex;
    assert_eq!(answered(&pair, &name, None, 2), 0);
    assert_eq!(answered(&pair, &name, Some(&old), 5), 5);
    // A forged server cookie counts as none.
    let mut forged = old.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(answered(&pair, &name, Some(&forged), 2), 0);

    // Rotation: BIND gets the new secret first and keeps the old one, and so does
    // dns-xdp, live. Old cookies still pass; BIND's new ones (made with the new
    // secret) pass too.
    drop(bind);
    let _bind = start_bind(
        &pair.server,
        SERVER_V4,
        &[(EXAMPLE_ZONE, &example_zone())],
        &[NEXT_SECRET, SECRET],
        &dir.path().join("bind-rotated"),
    )
    .expect("starting BIND with both secrets");
    let rotated = secrets_file(dir.path(), "rotated", &[NEXT_SECRET, SECRET]);
    let set = |file: &str| {
        let output = loader::run_command(
            &pair.server,
            &bpffs,
            &["set", "--iface", LINK, "--cookie-secrets", file],
        );
        assert!(output.status.success(), "{output:?}");
    };
    set(&rotated);
    let again = dig_cookie(&pair.client, server, &name, Some(&old)).expect("running dig");
    assert!(again.answered(), "{again:?}");
    let new = again.cookie.expect("a COOKIE in BIND's answer");
    assert!(made_with(NEXT_SECRET, &new).0, "{new:?}");
    assert_eq!(answered(&pair, &name, Some(&old), 3), 3);
    assert_eq!(answered(&pair, &name, Some(&new.hex), 3), 3);

    // The old secret dropped: its cookies are limited like none.
    let last = secrets_file(dir.path(), "last", &[NEXT_SECRET]);
    set(&last);
    assert_eq!(answered(&pair, &name, Some(&old), 2), 0);
    assert_eq!(answered(&pair, &name, Some(&new.hex), 3), 3);

    let (status, report) = loader.interrupt().unwrap();
    assert!(status.success());
    let count = |name: &str| report["counters"][name].as_u64().unwrap_or(0);
    println!(
        "cookies: valid {}, invalid {}, stale {}, none {}; rate_limited {}",
        count("cookie_valid"),
        count("cookie_invalid"),
        count("cookie_stale"),
        count("cookie_none"),
        count("rate_limited")
    );
    assert_eq!(count("cookie_valid"), 5 + 1 + 3 + 3 + 3);
    assert_eq!(count("cookie_invalid"), 2 + 2);
    assert_eq!(count("cookie_none"), 1 + 2);
    assert_eq!(count("rate_limited"), 2 + 2 + 2);
}
