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

#[test]
fn pins_of_another_namespaces_interface_are_not_adopted_and_a_gone_one_detaches() {
    let bpffs = dns_xdp_testkit::loader::BpfFs::new().unwrap();
    let (first, second) = (Pair::new().unwrap(), Pair::new().unwrap());
    // An instance on the first namespace's dns0, left attached.
    let loader = Loader::attach_pinned(&first.server, &bpffs, &["--keep-attached"]).unwrap();
    loader.interrupt().unwrap();
    assert!(first.server.xdp_attached(LINK));
    // The second namespace's dns0 has the same name and the same pin root: refused.
    let refused =
        dns_xdp_testkit::loader::run_command(&second.server, &bpffs, &["attach", "--iface", LINK]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("but dns0 here has no XDP program") && stderr.contains("another namespace"),
        "{stderr}"
    );
    assert!(!second.server.xdp_attached(LINK));
    assert!(
        first.server.xdp_attached(LINK),
        "the first instance is untouched"
    );
    // The first interface goes; `detach` still removes the instance's pins.
    first.server.ip(&["link", "del", LINK]).unwrap();
    let status = dns_xdp_testkit::loader::run_command(
        &first.server,
        &bpffs,
        &["status", "--iface", LINK, "--json"],
    );
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["present"], false);
    assert!(status["pins"].is_string());
    let detached =
        dns_xdp_testkit::loader::run_command(&first.server, &bpffs, &["detach", "--iface", LINK]);
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );
    assert!(!bpffs.path().join(LINK).exists(), "pins left");
}

#[test]
fn a_renamed_interface_is_named_in_the_log() {
    let pair = Pair::new().expect("creating namespaces");
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");
    pair.server
        .ip(&["link", "set", "dev", LINK, "name", "dns9"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let stderr = loader.stderr_text();
    // Back to its name, so the loader's exit detaches as usual.
    pair.server
        .ip(&["link", "set", "dev", "dns9", "name", LINK])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    loader.interrupt().expect("detaching");
    assert!(stderr.contains("was renamed to dns9"), "{stderr}");
}
