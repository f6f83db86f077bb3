//! Answer admission over veth, as an attacker and as a resolver would see it. The server
//! namespace runs a stateful input chain with the stateless source-port-53 accept that
//! backending without conntrack needs; dns-xdp must keep that rule from opening the host.
//! Needs root.

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use dns_xdp_testkit::{
    dns::{Client, Responder},
    loader::Loader,
    netns::{CLIENT_V4, LINK, Netns, Pair, SERVER_V4},
    packet::dns_query,
    raw_tcp::{ACK, RST, RawTcp, Seen, sockaddr},
};

/// A stateful host that serves DNS and backends without conntrack for DNS: policy drop,
/// established traffic, queries to port 53, and answers from port 53 on the interface
/// (the rule the conntrack bypass makes necessary, and the classic hole: `nmap -g 53`).
fn stateful_rules(iface: &str) -> String {
    format!(
        "table inet test_filter {{
  chain input {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname \"lo\" accept
    meta l4proto {{ icmp, ipv6-icmp }} accept
    th dport 53 accept
    iifname \"{iface}\" th sport 53 accept
  }}
}}
"
    )
}

/// Loads `rules` (nft syntax) into `netns`.
fn install_rules(netns: &Netns) {
    netns.nft(&stateful_rules(LINK)).unwrap();
}

/// An upstream DNS server (the tests' responder) on the client's port 53.
fn upstream_server(pair: &Pair) -> (SocketAddr, Responder) {
    let upstream = SocketAddr::new(CLIENT_V4.parse().unwrap(), 53);
    let responder = pair
        .client
        .run(move || Responder::bind(&[upstream], None))
        .unwrap()
        .expect("binding the upstream server");
    (upstream, responder)
}

/// Connection attempts from the client's port 53 to listeners on `ports` of the server,
/// one each (each a connection of its own): how many the listeners accepted.
fn connections_from_port_53(pair: &Pair, ports: &'static [u16]) -> usize {
    let listeners: Vec<TcpListener> = pair
        .server
        .run(|| {
            ports
                .iter()
                .map(|&port| {
                    let listener = TcpListener::bind((SERVER_V4, port)).unwrap();
                    listener.set_nonblocking(true).unwrap();
                    listener
                })
                .collect()
        })
        .unwrap();
    pair.client
        .run(move || {
            for &port in ports {
                let socket = socket2_bound_tcp((CLIENT_V4, 53));
                let target = SocketAddr::new(SERVER_V4.parse().unwrap(), port);
                let _ = connect_with_timeout(socket, target, Duration::from_millis(300));
            }
        })
        .unwrap();
    listeners
        .iter()
        .map(|listener| std::iter::from_fn(|| listener.accept().ok()).count())
        .sum()
}

/// A TCP socket bound to `local` (port reuse on, so repeated attempts can bind port 53).
fn socket2_bound_tcp(local: (&str, u16)) -> i32 {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let address = sockaddr(local.0.parse().unwrap(), local.1);
        assert_eq!(
            libc::bind(
                fd,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_in>() as u32
            ),
            0,
            "bind {local:?}: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Connects `fd` to `target` within `timeout`; closes it either way. Whether it connected.
fn connect_with_timeout(fd: i32, target: SocketAddr, timeout: Duration) -> bool {
    let SocketAddr::V4(target) = target else {
        unreachable!()
    };
    // SAFETY: plain socket calls on a descriptor this function owns, closed at the end.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let address = sockaddr(*target.ip(), target.port());
        libc::connect(
            fd,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ready = libc::poll(&mut poll, 1, timeout.as_millis() as i32);
        let mut error: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as u32;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut error).cast(),
            &mut len,
        );
        libc::close(fd);
        ready == 1 && error == 0
    }
}

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap()
}

/// Sends `count` datagrams from the client's port 53 to ten UDP listeners of the server;
/// returns how many the listeners received.
fn datagrams_from_port_53(pair: &Pair, count: usize) -> usize {
    let listeners: Vec<UdpSocket> = pair
        .server
        .run(|| {
            (0..10)
                .map(|_| {
                    let socket = UdpSocket::bind((SERVER_V4, 0)).unwrap();
                    socket.set_nonblocking(true).unwrap();
                    // Room for all of them: the count is the firewall's, not the socket's.
                    set_receive_buffer(&socket, 4 << 20);
                    socket
                })
                .collect()
        })
        .unwrap();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|socket| socket.local_addr().unwrap().port())
        .collect();
    pair.client
        .run(move || {
            let socket = UdpSocket::bind((CLIENT_V4, 53)).unwrap();
            for index in 0..count {
                let port = ports[index % ports.len()];
                let _ = socket.send_to(
                    &dns_query(index as u16, "spoofed.example"),
                    (SERVER_V4, port),
                );
                if index % 500 == 499 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0u8; 512];
    listeners
        .iter()
        .map(|socket| std::iter::from_fn(|| socket.recv(&mut buf).ok()).count())
        .sum()
}

/// SO_RCVBUFFORCE (as root: beyond net.core.rmem_max).
fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket, an int option and its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn source_port_53_opens_nothing_behind_dns_xdp() {
    let pair = Pair::new().expect("creating namespaces");
    install_rules(&pair.server);
    // Without dns-xdp the advised rule is the classic hole: the listener accepts.
    let before = connections_from_port_53(&pair, &[2222, 2223, 2224, 2225, 2226]);
    assert_eq!(
        before, 5,
        "the test rules must open the hole for the test to mean anything"
    );

    const DATAGRAMS: usize = 10_000;
    // The datagrams reach their listeners without dns-xdp (the rule accepts them).
    let datagrams_before = datagrams_from_port_53(&pair, DATAGRAMS);
    assert!(
        datagrams_before * 10 >= DATAGRAMS * 9,
        "{datagrams_before} of {DATAGRAMS} delivered without dns-xdp"
    );

    let loader = Loader::attach(&pair.server, &[]).expect("attaching");
    let after = connections_from_port_53(&pair, &[3222, 3223, 3224, 3225, 3226]);
    let delivered = datagrams_from_port_53(&pair, DATAGRAMS);
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "source port 53: {before} of 5 connections accepted without dns-xdp, {after} with it; \
         {datagrams_before} of {DATAGRAMS} datagrams delivered without it, {delivered} with it; \
         answer_unsolicited {}",
        counter(&report, "answer_unsolicited")
    );
    assert_eq!(after, 0, "a connection from port 53 got through");
    assert_eq!(delivered, 0, "datagrams from port 53 reached listeners");
    // Each connection attempt is a SYN and its retransmissions; the datagrams are exact.
    assert!(counter(&report, "answer_unsolicited") >= DATAGRAMS as u64 + 5);
    assert_eq!(counter(&report, "answer_udp4"), DATAGRAMS as u64);
}

#[test]
fn this_hosts_own_lookups_are_answered_and_spoofed_answers_are_not() {
    let pair = Pair::new().expect("creating namespaces");
    install_rules(&pair.server);
    let (upstream, responder) = upstream_server(&pair);
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");

    const LOOKUPS: usize = 100;
    let (udp, tcp, large) = pair
        .server
        .run(move || {
            let client = Client::default();
            let large = Client {
                fragment: true,
                ..Client::default()
            };
            let mut big = dns_query(0, "large.example");
            big.resize(3000, 0);
            let mut answered = (0, 0, 0);
            for index in 0..LOOKUPS {
                let id = index as u16;
                let mut query = dns_query(id, "example.com");
                answered.0 += usize::from(client.udp(upstream, &query).is_ok());
                query[..2].copy_from_slice(&(id + 1000).to_be_bytes());
                answered.1 += usize::from(client.tcp(upstream, &query).is_ok());
                big[..2].copy_from_slice(&(id + 2000).to_be_bytes());
                answered.2 += usize::from(large.udp(upstream, &big).is_ok_and(|a| a.len() == 3000));
            }
            answered
        })
        .unwrap();
    drop(responder);
    // Not one of them in the connection-tracking table: the bypass took them out.
    let tracked = pair
        .server
        .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))
        .unwrap()
        .expect("conntrack loaded");
    assert_eq!(tracked.trim(), "0", "the host's own lookups were tracked");

    // A spoofer who sees the query's port but not its ID: 100 wrong guesses, then the
    // right one.
    let attacker = pair
        .client
        .run(move || {
            let socket = UdpSocket::bind(upstream).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            socket
        })
        .unwrap();
    let resolver = pair
        .server
        .run(move || {
            let socket = UdpSocket::bind((SERVER_V4, 0)).unwrap();
            socket
                .send_to(&dns_query(7, "victim.example"), upstream)
                .unwrap();
            socket
        })
        .unwrap();
    let mut buf = [0u8; 512];
    let (len, peer) = attacker
        .recv_from(&mut buf)
        .expect("the query reaches the spoofer");
    let mut answer = buf[..len].to_vec();
    answer[2] |= 0x80;
    for guess in 0..100u16 {
        answer[..2].copy_from_slice(&(1000 + guess).to_be_bytes());
        attacker.send_to(&answer, peer).unwrap();
    }
    answer[..2].copy_from_slice(&7u16.to_be_bytes());
    attacker.send_to(&answer, peer).unwrap();
    resolver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ids = HashSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        match resolver.recv(&mut buf) {
            Ok(_) => {
                ids.insert(u16::from_be_bytes([buf[0], buf[1]]));
            }
            Err(_) => break,
        }
    }
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "backending: {udp}/{LOOKUPS} UDP, {tcp}/{LOOKUPS} TCP, {large}/{LOOKUPS} fragmented \
         answered; spoofed answers delivered: {:?}; admitted {}, unsolicited {}, fragments \
         admitted {}",
        ids,
        counter(&report, "answer_admitted"),
        counter(&report, "answer_unsolicited"),
        counter(&report, "fragment_admitted"),
    );
    assert_eq!((udp, tcp, large), (LOOKUPS, LOOKUPS, LOOKUPS));
    assert_eq!(
        ids,
        HashSet::from([7]),
        "only the right answer is delivered"
    );
    assert_eq!(counter(&report, "answer_unsolicited"), 100);
    // 3000 bytes over a 1500-byte MTU: two later fragments per answer.
    assert_eq!(counter(&report, "fragment_admitted"), 2 * LOOKUPS as u64);
}

/// Sends `count` bare ACKs from random client ports to the server's port 53, from the
/// client namespace (a raw socket: no connection behind them), and counts the RSTs from
/// port 53 that come back.
fn resets_for_bare_acks(pair: &Pair, count: usize) -> usize {
    pair.client
        .run(move || {
            let raw = RawTcp::open(CLIENT_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
            for index in 0..count {
                let port = 20_000 + (index % 40_000) as u16;
                raw.send((port, 53), index as u32, 0x1234_5678, ACK, &[]);
                if index % 1000 == 999 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let from_53_reset = |seen: &Seen| seen.source_port == 53 && seen.flags & RST != 0;
            raw.receive(Duration::from_millis(500), from_53_reset, usize::MAX)
                .len()
        })
        .unwrap()
}

#[test]
fn bare_acks_to_port_53_draw_no_reset_behind_dns_xdp() {
    let pair = Pair::new().expect("creating namespaces");
    let _responder = Responder::serve(&pair.server).expect("binding the responder");
    // Without dns-xdp the server's stack answers each with a RST, to whatever address
    // the ACK claims: a reflector.
    let before = resets_for_bare_acks(&pair, 200);
    assert!(
        before > 100,
        "{before} RSTs: the test must see them without dns-xdp"
    );
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");
    const ACKS: usize = 20_000;
    let after = resets_for_bare_acks(&pair, ACKS);
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "bare ACKs to port 53: {before} RSTs for 200 without dns-xdp, {after} for {ACKS} \
         with it; tcp_unsolicited {}",
        counter(&report, "tcp_unsolicited")
    );
    assert_eq!(after, 0);
    assert_eq!(counter(&report, "tcp_unsolicited"), ACKS as u64);
    assert_eq!(report["egress"]["response_tcp4_packets"], 0);
}

#[test]
fn a_masqueraded_namespace_behind_the_server_resolves_through_it() {
    let pair = Pair::new().expect("creating namespaces");
    // A container (or VM) behind the server namespace, masqueraded out of dns0: its
    // queries are forwarded, its answers come back to the server's own address.
    let inner = Netns::new("inr").expect("creating the inner namespace");
    pair.server
        .ip(&[
            "link",
            "add",
            "name",
            "in0",
            "type",
            "veth",
            "peer",
            "name",
            "in0",
            "netns",
            inner.name(),
        ])
        .unwrap();
    pair.server
        .ip(&["addr", "add", "198.18.1.1/24", "dev", "in0"])
        .unwrap();
    pair.server
        .ip(&["link", "set", "dev", "in0", "up"])
        .unwrap();
    inner
        .ip(&["addr", "add", "198.18.1.2/24", "dev", "in0"])
        .unwrap();
    inner.ip(&["link", "set", "dev", "in0", "up"]).unwrap();
    inner
        .ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    assert!(
        pair.server
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .status()
            .unwrap()
            .success()
    );
    pair.server
        .nft(&format!(
            "table ip test_nat {{\n  chain postrouting {{\n    type nat hook postrouting \
             priority 100;\n    oifname \"{LINK}\" masquerade\n  }}\n}}\n"
        ))
        .unwrap();
    let (upstream, _responder) = upstream_server(&pair);
    let loader = Loader::attach(&pair.server, &[]).expect("attaching with the bypass on");

    const LOOKUPS: usize = 30;
    let (udp, tcp) = inner
        .run(move || {
            let client = Client::default();
            let mut answered = (0, 0);
            for index in 0..LOOKUPS {
                let query = dns_query(index as u16, "example.com");
                answered.0 += usize::from(client.udp(upstream, &query).is_ok());
                answered.1 += usize::from(client.tcp(upstream, &query).is_ok());
            }
            answered
        })
        .unwrap();
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "masqueraded namespace: {udp}/{LOOKUPS} UDP and {tcp}/{LOOKUPS} TCP lookups answered; \
         answer_admitted {}, answer_unsolicited {}",
        counter(&report, "answer_admitted"),
        counter(&report, "answer_unsolicited")
    );
    assert_eq!((udp, tcp), (LOOKUPS, LOOKUPS));
    assert_eq!(counter(&report, "answer_unsolicited"), 0);
}
