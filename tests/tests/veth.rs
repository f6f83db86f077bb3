//! Real traffic over a veth pair between two network namespaces, counted by the real
//! loader attached to both ends. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use dns_xdp::report::counters_from_json;
use dns_xdp_common::{Counter, Counters};
use dns_xdp_tests::{
    dns::{Responder, tcp_exchange, udp_exchange},
    loader::{self, Loader},
    netns::{LINK, Netns, Pair, SERVER_V4, SERVER_V6},
    packet::dns_query,
};

const UDP4_QUERIES: usize = 50;
const UDP6_QUERIES: usize = 30;
const TCP4_QUERIES: usize = 10;
const TCP6_QUERIES: usize = 5;
/// 3000-byte UDP queries over a 1500-byte MTU: three IPv4 fragments each, both ways.
const FRAGMENTED_QUERIES: usize = 3;
const FRAGMENTS_PER_DATAGRAM: u64 = 3;

fn attach(netns: &Netns) -> anyhow::Result<Loader> {
    let mut command = netns.command(loader::binary().to_str().unwrap());
    command.args([
        "attach",
        "--iface",
        LINK,
        "--json",
        "--stats-interval",
        "0.1",
    ]);
    let mut loader = Loader::spawn(command)?;
    // The first periodic line means the program is attached and counting.
    loader.next_json(Duration::from_secs(10))?;
    Ok(loader)
}

fn server(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 53)
}

fn xdp_attached(netns: &Netns) -> bool {
    let output = netns.ip(&["-d", "link", "show", "dev", LINK]).unwrap();
    String::from_utf8_lossy(&output.stdout).contains("prog/xdp")
}

#[test]
fn queries_and_answers_over_veth_are_counted_and_ctrl_c_detaches() {
    let pair = Pair::new().expect("creating namespaces");
    let responder = pair
        .server
        .run(|| Responder::bind(&[server(SERVER_V4), server(SERVER_V6)]))
        .unwrap()
        .expect("binding the responder");
    let server_loader = attach(&pair.server).expect("attaching on the server side");
    let client_loader = attach(&pair.client).expect("attaching on the client side");
    assert!(xdp_attached(&pair.server) && xdp_attached(&pair.client));

    let answered = pair
        .client
        .run(|| {
            let mut answered = 0;
            let mut id = 0u16;
            let mut query = |large: bool| {
                id += 1;
                let mut query = dns_query(id, "example.com");
                if large {
                    query.resize(3000, 0);
                }
                query
            };
            for _ in 0..UDP4_QUERIES {
                answered += usize::from(
                    udp_exchange(None, server(SERVER_V4), &query(false), false).is_ok(),
                );
            }
            for _ in 0..UDP6_QUERIES {
                answered += usize::from(
                    udp_exchange(None, server(SERVER_V6), &query(false), false).is_ok(),
                );
            }
            for _ in 0..TCP4_QUERIES {
                answered += usize::from(tcp_exchange(server(SERVER_V4), &query(false)).is_ok());
            }
            for _ in 0..TCP6_QUERIES {
                answered += usize::from(tcp_exchange(server(SERVER_V6), &query(false)).is_ok());
            }
            for _ in 0..FRAGMENTED_QUERIES {
                answered +=
                    usize::from(udp_exchange(None, server(SERVER_V4), &query(true), true).is_ok());
            }
            answered
        })
        .unwrap();
    // Let the last TCP FIN/ACKs cross before counting.
    std::thread::sleep(Duration::from_millis(300));
    drop(responder);
    let (server_status, at_server) = server_loader.interrupt().unwrap();
    let (client_status, at_client) = client_loader.interrupt().unwrap();
    let at_server = counters_from_json(&at_server).unwrap();
    let at_client = counters_from_json(&at_client).unwrap();
    assert!(server_status.success() && client_status.success());
    assert!(
        !xdp_attached(&pair.server),
        "Ctrl-C left an XDP program on the server side"
    );
    assert!(
        !xdp_attached(&pair.client),
        "Ctrl-C left an XDP program on the client side"
    );

    let sent = UDP4_QUERIES + UDP6_QUERIES + TCP4_QUERIES + TCP6_QUERIES + FRAGMENTED_QUERIES;
    assert_eq!(answered, sent, "every query is answered");
    let show = |counters: &Counters| format!("{counters:?}");
    let fragmented = FRAGMENTED_QUERIES as u64;
    let non_first = fragmented * (FRAGMENTS_PER_DATAGRAM - 1);
    for (side, counters, query, answer) in [
        ("server", &at_server, true, false),
        ("client", &at_client, false, true),
    ] {
        println!("{side}: {}", show(counters));
        let get = |counter| counters.get(counter);
        let (udp4, udp6, tcp4, tcp6) = if query {
            (
                Counter::QueryUdp4,
                Counter::QueryUdp6,
                Counter::QueryTcp4,
                Counter::QueryTcp6,
            )
        } else {
            (
                Counter::AnswerUdp4,
                Counter::AnswerUdp6,
                Counter::AnswerTcp4,
                Counter::AnswerTcp6,
            )
        };
        let (other_udp4, other_udp6, other_tcp4, other_tcp6) = if answer {
            (
                Counter::QueryUdp4,
                Counter::QueryUdp6,
                Counter::QueryTcp4,
                Counter::QueryTcp6,
            )
        } else {
            (
                Counter::AnswerUdp4,
                Counter::AnswerUdp6,
                Counter::AnswerTcp4,
                Counter::AnswerTcp6,
            )
        };
        // UDP is exact: one datagram each way per query; a fragmented one counts its
        // first fragment by port and the rest as fragments.
        assert_eq!(
            get(udp4),
            UDP4_QUERIES as u64 + fragmented,
            "{side} {udp4:?}: {}",
            show(counters)
        );
        assert_eq!(
            get(udp6),
            UDP6_QUERIES as u64,
            "{side} {udp6:?}: {}",
            show(counters)
        );
        assert_eq!(
            get(Counter::Fragment),
            non_first,
            "{side} fragments: {}",
            show(counters)
        );
        // TCP: at least SYN(-ACK), the query or answer segment and the FIN per connection.
        assert!(
            get(tcp4) >= 3 * TCP4_QUERIES as u64,
            "{side} {tcp4:?}: {}",
            show(counters)
        );
        assert!(
            get(tcp6) >= 3 * TCP6_QUERIES as u64,
            "{side} {tcp6:?}: {}",
            show(counters)
        );
        assert!(
            get(tcp4) <= 12 * TCP4_QUERIES as u64,
            "{side} {tcp4:?}: {}",
            show(counters)
        );
        for counter in [
            other_udp4,
            other_udp6,
            other_tcp4,
            other_tcp6,
            Counter::Malformed,
        ] {
            assert_eq!(get(counter), 0, "{side} {counter:?}: {}", show(counters));
        }
        let classified: u64 = counters.values[1..].iter().sum();
        assert_eq!(
            get(Counter::Packets),
            classified,
            "{side}: one class per packet"
        );
    }
}
