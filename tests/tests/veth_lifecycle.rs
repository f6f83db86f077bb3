//! The daemon follows its interface: deleted and re-created under a running loader, the
//! interface is filtered again within 2 s, with the state it had. Needs root.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use dns_xdp_testkit::{
    dns::{Client, Responder},
    loader::Loader,
    netns::{CLIENT_V4, LINK, Pair, SERVER_V4},
    packet::dns_query,
};

/// Whether one query from the client is answered.
fn answered(pair: &Pair, id: u16) -> bool {
    pair.client
        .run(move || {
            let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
            let client = Client {
                timeout: Duration::from_millis(300),
                ..Client::default()
            };
            client.udp(server, &dns_query(id, "example.com")).is_ok()
        })
        .unwrap()
}

#[test]
fn a_deleted_and_recreated_interface_is_filtered_again_with_its_state() {
    let pair = Pair::new().expect("creating namespaces");
    let _responder = Responder::serve(&pair.server).expect("binding the responder");
    let deny = format!("{CLIENT_V4}/32");
    let loader = Loader::attach(&pair.server, &["--deny", &deny]).expect("attaching");
    assert!(!answered(&pair, 1), "the deny list holds");

    pair.server.ip(&["link", "del", LINK]).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        loader.stderr_text().contains("is gone"),
        "{}",
        loader.stderr_text()
    );

    pair.connect(1).unwrap();
    let recreated = Instant::now();
    let mut filtered_after = None;
    while recreated.elapsed() < Duration::from_secs(5) {
        if pair.server.xdp_attached(LINK) {
            filtered_after = Some(recreated.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let filtered_after = filtered_after.expect("never attached to the new interface");
    // The deny list (state kept) applies to the new interface.
    let refused = !answered(&pair, 2);
    let stderr = loader.stderr_text();
    let (_, report) = loader.interrupt().expect("detaching");
    println!("re-created interface filtered again after {filtered_after:.2?}");
    assert!(stderr.contains("is back"), "{stderr}");
    assert!(
        filtered_after < Duration::from_secs(2),
        "{filtered_after:?}"
    );
    assert!(refused, "the deny list applies again");
    assert!(report["counters"]["denied"].as_u64().unwrap() >= 2);
    assert!(!pair.server.xdp_attached(LINK), "Ctrl-C detached");
}
