//! Long IPv6 extension-header chains over veth: the kernel delivers a query behind more
//! destination-options headers than the parser walks (behind any number on older
//! kernels; 6.18.44 discards chains of more than 12), so a chain longer than the parser
//! walks must be dropped, not passed unpoliced. Crafted frames sent with an AF_PACKET socket from
//! the client namespace. Needs root.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use dns_xdp_testkit::{
    dns::Responder,
    flood::mac_of,
    loader::Loader,
    netns::{CLIENT_V6, LINK, Pair},
    packet::{DSTOPTS, Layer, build, dns_query, internet_checksum},
};

const ETH: usize = 14;
/// The UDP source port `Layer::udp` writes: where the answers come back to.
const CLIENT_PORT: u16 = 40_000;

/// An IPv6 UDP query to the server's port 53 behind `headers` destination-options
/// headers, with real MAC addresses and a valid UDP checksum (IPv6 requires one).
fn query_behind(headers: usize, id: u16, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut layers = vec![Layer::Eth, Layer::Ipv6];
    for _ in 0..headers {
        layers.push(Layer::Ipv6Ext {
            protocol: DSTOPTS,
            len_units: 0,
        });
    }
    layers.push(Layer::udp(53));
    layers.push(Layer::Payload(dns_query(id, "example.com")));
    let mut frame = build(&layers);
    frame[..6].copy_from_slice(&macs.1);
    frame[6..12].copy_from_slice(&macs.0);
    let udp = ETH + 40 + 8 * headers;
    let udp_len = frame.len() - udp;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[ETH + 8..ETH + 40]);
    pseudo.extend((udp_len as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 17]);
    pseudo.extend_from_slice(&frame[udp..]);
    let checksum = match internet_checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    frame[udp + 6..udp + 8].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// Sends `count` queries behind `headers` extension headers from the client namespace and
/// counts the answers that come back within half a second of the last.
fn answered(pair: &Pair, headers: usize, count: u16) -> usize {
    let macs = (
        mac_of(pair.client.name(), LINK).unwrap(),
        mac_of(pair.server.name(), LINK).unwrap(),
    );
    pair.client
        .run(move || {
            let receiver =
                UdpSocket::bind(SocketAddr::new(CLIENT_V6.parse().unwrap(), CLIENT_PORT)).unwrap();
            receiver
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            // SAFETY: a packet socket this closure owns and closes; buffers it owns.
            unsafe {
                let socket = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                );
                assert!(socket >= 0, "packet sockets need root");
                let name = std::ffi::CString::new(LINK).unwrap();
                let mut address: libc::sockaddr_ll = std::mem::zeroed();
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                address.sll_halen = 6;
                address.sll_addr[..6].copy_from_slice(&macs.1);
                for id in 0..count {
                    let frame = query_behind(headers, id, macs);
                    let sent = libc::sendto(
                        socket,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const address).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(sent, frame.len() as isize);
                }
                libc::close(socket);
            }
            let mut buf = [0u8; 512];
            let mut answers = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(500) {
                if receiver.recv(&mut buf).is_ok() {
                    answers += 1;
                }
            }
            answers
        })
        .unwrap()
}

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap()
}

#[test]
fn a_deny_listed_source_gets_nothing_through_behind_a_long_header_chain() {
    let pair = Pair::new().expect("creating namespaces");
    let _responder = Responder::serve(&pair.server).expect("binding the responder");
    // The kernel alone answers a query behind 9 headers, one more than the parser walks:
    // that is the hole. Longer chains are delivered or discarded depending on the kernel
    // (6.18.44 discards more than 12); dns-xdp must drop them all itself, counted.
    let chains = [9, 12, 16, 32];
    let before: Vec<usize> = chains
        .iter()
        .map(|&headers| answered(&pair, headers, 10))
        .collect();
    assert_eq!(
        before[0], 10,
        "the kernel must deliver queries behind 9 headers for the test to mean anything"
    );

    let loader = Loader::attach(&pair.server, &["--deny", "2001:2::2/128"]).expect("attaching");
    let within: usize = answered(&pair, 8, 10);
    let after: Vec<usize> = chains
        .iter()
        .map(|&headers| answered(&pair, headers, 10))
        .collect();
    let (_, report) = loader.interrupt().expect("detaching");
    println!(
        "IPv6 queries from a deny-listed source behind {chains:?} extension headers: \
         {before:?} of 10 answered without dns-xdp, {after:?} with it; behind 8: {within} answered; \
         malformed {}, denied {}",
        counter(&report, "malformed"),
        counter(&report, "denied")
    );
    assert_eq!(within, 0, "behind 8 headers the deny list applies");
    assert_eq!(after, [0; 4], "a long chain got past the deny list");
    // Dropped by dns-xdp itself, not by the kernel after it: every one counted.
    assert_eq!(counter(&report, "malformed"), 10 * chains.len() as u64);
    assert_eq!(counter(&report, "denied"), 10);
}

#[test]
fn behind_eight_headers_a_limited_source_gets_exactly_its_burst() {
    let pair = Pair::new().expect("creating namespaces");
    let _responder = Responder::serve(&pair.server).expect("binding the responder");
    let loader = Loader::attach(
        &pair.server,
        &["--rate", "1/min", "--burst", "1", "--levels", "none"],
    )
    .expect("attaching");
    let got = answered(&pair, 8, 10);
    let (_, report) = loader.interrupt().expect("detaching");
    assert_eq!(got, 1, "rate 1/min, burst 1: exactly one of 10 answered");
    assert_eq!(counter(&report, "rate_limited"), 9);
}
