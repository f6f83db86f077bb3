//! A distributed spoofed flood over veth: 65 536 sources of 198.19.0.0/16, each far
//! below the per-source limit, against a server that answers at most `CAPACITY` queries
//! a second, while a well-behaved client queries at a modest rate. Measured in one run:
//! the client's loss with per-source limits only, then with the aggregate levels and a
//! server budget. Needs root.

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use dns_xdp_testkit::{
    dns::Responder,
    flood::{Flood, Kind, Spec},
    loader::Loader,
    netns::{CLIENT_V4, Pair, SERVER_V4},
    packet::dns_query,
};

/// Queries per second the server answers.
const CAPACITY: u32 = 1_000;
/// The flood: twenty times the server's capacity, 0.3 queries/s per source on average.
const FLOOD_RATE: u64 = 20_000;
const LEGIT_RATE: u32 = 40;
const LEGIT_TIME: Duration = Duration::from_secs(4);
/// An answer later than this is lost: the client has given up (as stub resolvers do).
const LEGIT_TIMEOUT: Duration = Duration::from_millis(500);
const PER_SOURCE: [&str; 6] = ["--rate", "50/s", "--burst", "100", "--levels", "none"];
/// The same per-source limit and the automatic levels (/24 at 200/s, /16 at 1600/s): the
/// flood's /16 still sends more than the server can answer.
const LEVELS: [&str; 6] = ["--rate", "50/s", "--burst", "100", "--levels", "auto"];
/// The levels and a budget below the server's capacity.
const LEVELS_AND_BUDGET: [&str; 8] = [
    "--rate", "50/s", "--burst", "100", "--levels", "auto", "--budget", "800/s",
];

/// Sends `LEGIT_RATE` queries a second for `LEGIT_TIME` to `server`, each with its own
/// ID; returns (sent, answered within `LEGIT_TIMEOUT`). Call inside the client namespace.
fn legit_load(server: SocketAddr) -> anyhow::Result<(usize, usize)> {
    let socket = UdpSocket::bind((CLIENT_V4, 0))?;
    socket.set_nonblocking(true)?;
    let count = (LEGIT_RATE as usize) * LEGIT_TIME.as_secs() as usize;
    let spacing = Duration::from_secs(1) / LEGIT_RATE;
    let started = Instant::now();
    let mut answered = HashSet::new();
    let mut sent_at = Vec::with_capacity(count);
    let mut buf = [0u8; 512];
    while started.elapsed() < LEGIT_TIME + LEGIT_TIMEOUT {
        if sent_at.len() < count && started.elapsed() >= spacing * sent_at.len() as u32 {
            socket.send_to(&dns_query(sent_at.len() as u16, "example.com"), server)?;
            sent_at.push(Instant::now());
        }
        while let Ok(len) = socket.recv(&mut buf) {
            let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if len >= 12
                && buf[2] & 0x80 != 0
                && sent_at
                    .get(id)
                    .is_some_and(|at| at.elapsed() <= LEGIT_TIMEOUT)
            {
                answered.insert(id);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok((sent_at.len(), answered.len()))
}

/// The legitimate client's loss under the flood with dns-xdp attached with `limits`,
/// and the loader's final report.
fn loss_under_flood(pair: &Pair, limits: &[&str]) -> (f64, serde_json::Value) {
    // A server of its own per measurement: one that served the previous one still holds
    // seconds of its flood in its receive queue, and every legit query would wait behind
    // them (it did: 50 to 80 % loss with the budget on, from the backlog alone).
    let _responder = Responder::serve_at_most(&pair.server, Some(CAPACITY)).unwrap();
    let loader = Loader::attach(&pair.server, limits).expect("attaching");
    let spec = Spec::across(
        &pair.client,
        &pair.server,
        Kind::Spoofed,
        "198.19.0.0".parse().unwrap(),
        "example.com",
        Some(FLOOD_RATE),
    )
    .expect("the flood's addresses");
    let flood = Flood::start(&spec).expect("starting the flood");
    // Let the flood run long enough to empty the aggregate buckets' bursts.
    thread::sleep(Duration::from_millis(500));
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    let (sent, answered) = pair
        .client
        .run(move || legit_load(server))
        .unwrap()
        .unwrap();
    let flooded = flood.stop().expect("the flood ran");
    let (_, report) = loader.interrupt().expect("detaching");
    let loss = 1.0 - answered as f64 / sent as f64;
    println!(
        "{limits:?}: legit {answered}/{sent} answered (loss {:.1} %), flood {:.0} packets/s; counters {}",
        loss * 100.0,
        flooded.rate(),
        report["counters"]
    );
    (loss, report)
}

#[test]
fn aggregate_levels_and_a_budget_keep_legitimate_clients_served_under_a_spoofed_flood() {
    let pair = Pair::new().expect("creating namespaces");
    // Spoofed sources have no route back: the server's answers to them fail at once.
    pair.server.accept_spoofed_sources().unwrap();

    let (per_source, report) = loss_under_flood(&pair, &PER_SOURCE);
    let counters = &report["counters"];
    assert_eq!(
        counters["rate_limited"], 0,
        "every spoofed source stays under its own limit: {counters}"
    );
    let (levels, report) = loss_under_flood(&pair, &LEVELS);
    let counters = &report["counters"];
    assert!(
        counters["rate_limited_level2"].as_u64().unwrap() > FLOOD_RATE,
        "the /16 level refuses most of the flood: {counters}"
    );
    let (budget, report) = loss_under_flood(&pair, &LEVELS_AND_BUDGET);
    let counters = &report["counters"];
    assert!(
        counters["budget_shed_heavy"].as_u64().unwrap() > u64::from(CAPACITY),
        "the budget sheds the heavy /16: {counters}"
    );
    // (Light sheds happen too, while the flood's first queries are light: until its /16
    // bucket has spent half its burst.)
    println!(
        "legitimate loss: per-source {:.1} %, levels {:.1} %, levels and budget {:.1} %",
        per_source * 100.0,
        levels * 100.0,
        budget * 100.0
    );
    assert!(
        per_source > 0.5 && levels > 0.5,
        "the flood saturates the server without a budget: loss {per_source:.3}, {levels:.3}"
    );
    assert!(
        budget < 0.1 && budget * 5.0 < levels.min(per_source),
        "with levels and a budget the legitimate loss falls well below: {budget:.3}"
    );
}
