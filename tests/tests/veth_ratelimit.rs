//! Per-source rate limiting on real traffic: one abusive client and several normal ones
//! query a responder across a veth pair; the loader limits the abuser and names it.
//! Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use dns_xdp_common::Counter;
use dns_xdp_testkit::{
    dns::{Client, Responder, udp_flood},
    loader::Loader,
    netns::{LINK, Pair, SERVER_V4},
    packet::dns_query,
};

const RATE: f64 = 20.0;
const BURST: usize = 10;
const FLOOD: u16 = 400;
const ABUSER: &str = "198.18.0.10";
const NORMAL: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
const NORMAL_QUERIES: usize = 8;

#[test]
fn an_abusive_source_is_held_to_its_rate_and_named_while_others_lose_nothing() {
    let pair = Pair::new().expect("creating namespaces");
    for addr in std::iter::once(ABUSER).chain(NORMAL) {
        pair.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", LINK])
            .unwrap();
    }
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    let responder = Responder::serve(&pair.server).unwrap();
    let loader = Loader::attach(
        &pair.server,
        &[
            "--rate", "20/s", "--burst", "10", "--top", "5", "--levels", "none",
        ],
    )
    .expect("attaching");

    let (flood, normal) = pair
        .client
        .run(move || {
            let flood = std::thread::spawn(move || {
                udp_flood(
                    ABUSER.parse().unwrap(),
                    server,
                    FLOOD,
                    Duration::from_micros(2500),
                )
            });
            let mut normal = 0;
            for round in 0..NORMAL_QUERIES {
                for addr in NORMAL {
                    let socket_addr: IpAddr = addr.parse().unwrap();
                    let query = dns_query(round as u16, "example.com");
                    normal += usize::from(
                        Client {
                            source: Some(socket_addr),
                            ..Client::default()
                        }
                        .udp(server, &query)
                        .is_ok(),
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (flood.join().unwrap().unwrap(), normal)
        })
        .unwrap();
    drop(responder);
    let (answered, sending) = flood;
    let (status, counters) = loader.interrupt().unwrap();
    assert!(status.success());

    assert_eq!(
        normal,
        NORMAL.len() * NORMAL_QUERIES,
        "normal sources lose nothing"
    );
    // GCRA: burst + rate × the time the flood lasted, within one packet either way.
    let expected = BURST as f64 + RATE * sending.as_secs_f64();
    println!(
        "abuser: {answered} of {FLOOD} answered over {sending:?} (expected about {expected:.1})"
    );
    assert!(
        (answered as f64 - expected).abs() <= 1.5,
        "abuser got {answered} answers, expected {expected:.1}"
    );
    let top = &counters["top"];
    assert_eq!(top[0]["prefix"], format!("{ABUSER}/32"), "top: {top}");
    assert_eq!(top[0]["passed"], answered as u64, "top: {top}");
    assert_eq!(
        top[0]["dropped"],
        u64::from(FLOOD) - answered as u64,
        "top: {top}"
    );
    assert_eq!(
        top.as_array().unwrap().len(),
        1,
        "only the abuser was refused: {top}"
    );
    let counter = |counter: Counter| counters["counters"][counter.name()].as_u64().unwrap();
    assert_eq!(
        counter(Counter::RateLimited),
        u64::from(FLOOD) - answered as u64
    );
    assert_eq!(
        counter(Counter::RatePassed),
        answered as u64 + (NORMAL.len() * NORMAL_QUERIES) as u64
    );
    assert_eq!(counter(Counter::SourcesCreated), 1 + NORMAL.len() as u64);
}
