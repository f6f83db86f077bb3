//! Limits that hold under churn, on real traffic: two abusers at twice their limit and
//! three normal clients query across a veth pair while a spoofed flood from 65 536
//! sources arrives at 200 times the source table's size in packets per second. The
//! flood's one-packet sources take slots all the time; the abusers' buckets must not
//! be pushed out by them (an evicted bucket would come back with a full burst), and the
//! normal clients, which spoke before the flood, keep theirs. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use dns_xdp_testkit::{
    dns::{Client, Responder, udp_flood},
    flood::{Flood, Kind, Spec},
    loader::Loader,
    netns::{LINK, Pair, SERVER_V4},
    packet::dns_query,
};

const RATE: f64 = 10.0;
const BURST: f64 = 20.0;
/// Slots in the source table: 32 lines of 8.
const TABLE: u64 = 256;
/// The flood: 200 times the table's slots, in packets per second.
const FLOOD_RATE: u64 = 200 * TABLE;
/// Each abuser: 100 queries 50 ms apart, twice its limit.
const ABUSER_QUERIES: u16 = 100;
const ABUSER_SPACING: Duration = Duration::from_millis(50);
/// Spoke before the flood began.
const EARLY_ABUSER: &str = "198.18.0.10";
/// First spoke a second into the flood, when every line was full of the flood's sources:
/// held to at most its limit.
const LATE_ABUSER: &str = "198.18.0.11";
const NORMAL: [&str; 3] = ["198.18.0.12", "198.18.0.13", "198.18.0.14"];
const NORMAL_ROUNDS: u16 = 20;

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap_or(0)
}

/// The `top` entry of `addr`/32 as (passed, dropped).
fn top_entry(report: &serde_json::Value, addr: &str) -> Option<(u64, u64)> {
    let prefix = format!("{addr}/32");
    report["top"].as_array()?.iter().find_map(|entry| {
        (entry["prefix"] == prefix.as_str()).then(|| {
            (
                entry["passed"].as_u64().unwrap_or(0),
                entry["dropped"].as_u64().unwrap_or(0),
            )
        })
    })
}

#[test]
fn abusers_stay_limited_and_normal_clients_keep_their_slots_through_a_churning_flood() {
    let pair = Pair::new().expect("creating namespaces");
    for addr in [EARLY_ABUSER, LATE_ABUSER].into_iter().chain(NORMAL) {
        pair.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", LINK])
            .unwrap();
    }
    // The flood passes dns-xdp (each source under its limit) and is dropped behind it,
    // before the responder: the responder's queue then holds only the clients' queries,
    // and what they get back measures dns-xdp alone.
    let rules = "table ip churn_test {\n  chain pre {\n    type filter hook prerouting \
                 priority -300;\n    ip saddr 198.19.0.0/16 drop\n  }\n}\n";
    pair.server
        .nft(rules)
        .expect("installing the drop-behind rule");
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    let _responder = Responder::serve(&pair.server).unwrap();
    let table = TABLE.to_string();
    let loader = Loader::attach(
        &pair.server,
        &[
            "--rate",
            "10/s",
            "--burst",
            "20",
            "--levels",
            "none",
            "--table-size",
            &table,
            "--top",
            "50",
        ],
    )
    .expect("attaching");
    let spec = Spec::across(
        &pair.client,
        &pair.server,
        Kind::Spoofed,
        "198.19.0.0".parse().unwrap(),
        "example.com",
        Some(FLOOD_RATE),
    )
    .expect("the flood's addresses");

    let (early, late, normal, flooded) = pair
        .client
        .run(move || {
            let ask = |addr: &str, id: u16| {
                Client {
                    source: Some(addr.parse::<IpAddr>().unwrap()),
                    ..Client::default()
                }
                .udp(server, &dns_query(id, "example.com"))
                .is_ok()
            };
            // The normal clients speak before the flood, as a resolver's clients do.
            let mut normal = NORMAL.iter().filter(|addr| ask(addr, 0)).count();
            let abuser = |addr: &'static str| {
                thread::spawn(move || {
                    udp_flood(
                        addr.parse().unwrap(),
                        server,
                        ABUSER_QUERIES,
                        ABUSER_SPACING,
                    )
                })
            };
            let early = abuser(EARLY_ABUSER);
            thread::sleep(Duration::from_millis(200));
            let flood = Flood::start(&spec).expect("starting the flood");
            thread::sleep(Duration::from_secs(1));
            let late = abuser(LATE_ABUSER);
            for round in 1..=NORMAL_ROUNDS {
                normal += NORMAL.iter().filter(|addr| ask(addr, round)).count();
                thread::sleep(Duration::from_millis(200));
            }
            let early = early.join().unwrap().unwrap();
            let late = late.join().unwrap().unwrap();
            (early, late, normal, flood.stop().expect("the flood ran"))
        })
        .unwrap();
    let (status, report) = loader.interrupt().unwrap();
    assert!(status.success());

    println!(
        "flood {:.0} packets/s over a table of {TABLE}; slots claimed {}, claim races {}; \
         early abuser {early:?}, late abuser {late:?}, normal {normal}; top {}",
        flooded.rate(),
        counter(&report, "sources_created"),
        counter(&report, "table_full"),
        report["top"]
    );
    assert!(
        flooded.rate() > 0.9 * FLOOD_RATE as f64,
        "the flood ran at its rate: {:.0}",
        flooded.rate()
    );
    assert!(
        counter(&report, "sources_created") > 100 * TABLE,
        "the flood churned the table: {} slots claimed",
        counter(&report, "sources_created")
    );
    assert_eq!(
        normal,
        NORMAL.len() * (usize::from(NORMAL_ROUNDS) + 1),
        "normal clients lose nothing"
    );
    // GCRA: burst + rate × the time the abuser sent, within three either way, counted by
    // the kernel in the abuser's slot and seen in its answers.
    let (answered, sending) = early;
    let expected = BURST + RATE * sending.as_secs_f64();
    assert!(
        (answered as f64 - expected).abs() <= 3.0,
        "the early abuser got {answered} answers over {sending:?}, expected {expected:.1}"
    );
    assert_eq!(
        top_entry(&report, EARLY_ABUSER),
        Some((answered as u64, u64::from(ABUSER_QUERIES) - answered as u64)),
        "the early abuser's slot counted every query: {}",
        report["top"]
    );
    // The late abuser's first query found its line full of the flood's one-packet
    // sources: it took the least used, newest slot and that slot's bucket, never fuller
    // than its own would be, and the next newcomer took the slot back. While the flood
    // overflows the table, sources first seen during it share one bucket per line (the
    // newcomers' false limiting, docs/ARCHITECTURE.md "Source table"): less than the
    // limit, never more. Nothing gets a fresh burst by being evicted.
    let (answered, sending) = late;
    let most = BURST + RATE * sending.as_secs_f64();
    assert!(
        answered as f64 <= most + 3.0,
        "the late abuser got {answered} answers over {sending:?}, at most {most:.1}"
    );
}
