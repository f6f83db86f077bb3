//! Real traffic over a veth pair between two network namespaces, counted by the real
//! loader attached to both ends. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use dns_xdp::report::counters_from_json;
use dns_xdp_common::{Class, Counter, Counters, Family, L4};
use dns_xdp_testkit::{
    dns::{Client, Responder},
    loader::Loader,
    netns::{LINK, Pair, SERVER_V4, SERVER_V6},
    packet::dns_query,
};

const UDP4_QUERIES: usize = 50;
const UDP6_QUERIES: usize = 30;
const TCP4_QUERIES: usize = 10;
const TCP6_QUERIES: usize = 5;
/// 3000-byte UDP queries over a 1500-byte MTU: three IPv4 fragments each, both ways.
const FRAGMENTED_QUERIES: usize = 3;
const FRAGMENTS_PER_DATAGRAM: u64 = 3;

fn server(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 53)
}

#[test]
fn queries_and_answers_over_veth_are_counted_and_ctrl_c_detaches() {
    let pair = Pair::new().expect("creating namespaces");
    let responder = Responder::serve(&pair.server).expect("binding the responder");
    let server_loader = Loader::attach(&pair.server, &[]).expect("attaching on the server side");
    let client_loader = Loader::attach(&pair.client, &[]).expect("attaching on the client side");
    assert!(pair.server.xdp_attached(LINK) && pair.client.xdp_attached(LINK));

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
                    Client::default()
                        .udp(server(SERVER_V4), &query(false))
                        .is_ok(),
                );
            }
            for _ in 0..UDP6_QUERIES {
                answered += usize::from(
                    Client::default()
                        .udp(server(SERVER_V6), &query(false))
                        .is_ok(),
                );
            }
            for _ in 0..TCP4_QUERIES {
                answered += usize::from(
                    Client::default()
                        .tcp(server(SERVER_V4), &query(false))
                        .is_ok(),
                );
            }
            for _ in 0..TCP6_QUERIES {
                answered += usize::from(
                    Client::default()
                        .tcp(server(SERVER_V6), &query(false))
                        .is_ok(),
                );
            }
            for _ in 0..FRAGMENTED_QUERIES {
                answered += usize::from(
                    Client {
                        fragment: true,
                        ..Client::default()
                    }
                    .udp(server(SERVER_V4), &query(true))
                    .is_ok(),
                );
            }
            answered
        })
        .unwrap();
    // Let the last TCP FIN/ACKs cross before counting.
    std::thread::sleep(Duration::from_millis(300));
    drop(responder);
    let (server_status, at_server) = server_loader.interrupt().unwrap();
    let (client_status, at_client) = client_loader.interrupt().unwrap();
    let egress_server = at_server["egress"].clone();
    let egress_client = at_client["egress"].clone();
    println!("egress server: {egress_server}\negress client: {egress_client}");
    // Egress (TC) on each side sees exactly the UDP datagrams the other side's XDP saw:
    // responses leaving the server, queries leaving the client. Frame sizes are known:
    // a 29-byte query or answer is 71 bytes over IPv4, 91 over IPv6, and a fragmented
    // one's first fragment fills the 1500-byte MTU.
    let udp4 = (UDP4_QUERIES + FRAGMENTED_QUERIES) as u64;
    let udp4_bytes = UDP4_QUERIES as u64 * 71 + FRAGMENTED_QUERIES as u64 * 1514;
    for (egress, direction) in [(&egress_server, "response"), (&egress_client, "upstream")] {
        let get = |name: &str| egress[format!("{direction}_{name}")].as_u64().unwrap();
        assert_eq!(get("udp4_packets"), udp4, "{direction}: {egress}");
        assert_eq!(get("udp4_bytes"), udp4_bytes, "{direction}: {egress}");
        assert_eq!(
            get("udp6_packets"),
            UDP6_QUERIES as u64,
            "{direction}: {egress}"
        );
        assert_eq!(
            get("udp6_bytes"),
            UDP6_QUERIES as u64 * 91,
            "{direction}: {egress}"
        );
        assert!(
            get("tcp4_packets") >= 2 * TCP4_QUERIES as u64,
            "{direction}: {egress}"
        );
        assert!(
            get("tcp6_packets") >= 2 * TCP6_QUERIES as u64,
            "{direction}: {egress}"
        );
        let other = if direction == "response" {
            "upstream"
        } else {
            "response"
        };
        for name in [
            "udp4_packets",
            "udp6_packets",
            "tcp4_packets",
            "tcp6_packets",
        ] {
            assert_eq!(
                egress[format!("{other}_{name}")],
                0,
                "{other}_{name}: {egress}"
            );
        }
    }
    let at_server = counters_from_json(&at_server).unwrap();
    let at_client = counters_from_json(&at_client).unwrap();
    assert!(server_status.success() && client_status.success());
    assert!(
        !pair.server.xdp_attached(LINK),
        "Ctrl-C left an XDP program on the server side"
    );
    assert!(
        !pair.client.xdp_attached(LINK),
        "Ctrl-C left an XDP program on the client side"
    );

    let sent = UDP4_QUERIES + UDP6_QUERIES + TCP4_QUERIES + TCP6_QUERIES + FRAGMENTED_QUERIES;
    assert_eq!(answered, sent, "every query is answered");
    let show = |counters: &Counters| format!("{counters:?}");
    let fragmented = FRAGMENTED_QUERIES as u64;
    let non_first = fragmented * (FRAGMENTS_PER_DATAGRAM - 1);
    for (side, counters, query) in [("server", &at_server, true), ("client", &at_client, false)] {
        println!("{side}: {}", show(counters));
        let get = |counter| counters.get(counter);
        // Queries arrive at the server, answers at the client; never the other way.
        let dns = |query: bool, l4, ipv6| {
            let family = Family::of_ipv6(ipv6);
            if query {
                Class::Query { l4, family }
            } else {
                Class::Answer { l4, family }
            }
            .counter()
        };
        let [
            udp4,
            udp6,
            tcp4,
            tcp6,
            other_udp4,
            other_udp6,
            other_tcp4,
            other_tcp6,
        ] = [
            dns(query, L4::Udp, false),
            dns(query, L4::Udp, true),
            dns(query, L4::Tcp, false),
            dns(query, L4::Tcp, true),
            dns(!query, L4::Udp, false),
            dns(!query, L4::Udp, true),
            dns(!query, L4::Tcp, false),
            dns(!query, L4::Tcp, true),
        ];
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
        let classified: u64 = Counter::ALL
            .iter()
            .filter(|counter| counter.is_class())
            .map(|&counter| get(counter))
            .sum();
        assert_eq!(
            get(Counter::Packets),
            classified,
            "{side}: one class per packet"
        );
        // Every answer the client got answers a query it sent; the later fragments of
        // its answers pass with them. At the server, the later fragments of queries are
        // charged like queries (no limit here: all pass).
        assert_eq!(get(Counter::AnswerUnsolicited), 0, "{side}");
        let (admitted, policed) = if query {
            (0, non_first)
        } else {
            (non_first, 0)
        };
        assert_eq!(get(Counter::FragmentAdmitted), admitted, "{side}");
        assert_eq!(get(Counter::FragmentPoliced), policed, "{side}");
    }
}
