//! The metrics server holds up against clients that open connections and send nothing:
//! it serves a bounded number at once and closes idle ones, so a scrape still gets
//! through. Needs root.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use dns_xdp::metrics::{MAX_CONNECTIONS, READ_TIMEOUT};
use dns_xdp_testkit::{loader::Loader, netns::Pair};

const ADDR: &str = "127.0.0.1:9610";

/// One scrape: the status line and how long it took.
fn scrape() -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(ADDR).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT * 3)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.lines().next().unwrap_or_default().to_owned();
    (status, started.elapsed())
}

#[test]
fn idle_connections_cannot_hold_the_metrics_server() {
    let pair = Pair::new().expect("creating namespaces");
    let loader = Loader::attach(&pair.server, &["--metrics-addr", ADDR]).expect("attaching");
    let (idle_closed_after, scraped) = pair
        .server
        .run(|| {
            // Twice as many silent connections as the server serves at once.
            let idle: Vec<TcpStream> = (0..2 * MAX_CONNECTIONS)
                .map(|_| TcpStream::connect(ADDR).unwrap())
                .collect();
            let opened = Instant::now();
            // The server closes them once they have been silent for READ_TIMEOUT.
            let mut first = idle[0].try_clone().unwrap();
            first.set_read_timeout(Some(READ_TIMEOUT * 3)).unwrap();
            let mut byte = [0u8; 1];
            let closed = matches!(first.read(&mut byte), Ok(0) | Err(_));
            let idle_closed_after = closed.then(|| opened.elapsed());
            // A scrape now gets a slot (the idle ones are gone or going).
            let scraped = scrape();
            drop(idle);
            (idle_closed_after, scraped)
        })
        .unwrap();
    let (_, report) = loader.interrupt().expect("detaching");
    assert!(report["counters"].is_object());
    let closed_after = idle_closed_after.expect("an idle connection was never closed");
    println!(
        "{} idle connections: closed after {closed_after:.1?}; then a scrape: {} in {:.1?}",
        2 * MAX_CONNECTIONS,
        scraped.0,
        scraped.1
    );
    assert!(closed_after >= READ_TIMEOUT - Duration::from_millis(100));
    assert!(closed_after < READ_TIMEOUT * 2, "{closed_after:?}");
    assert_eq!(scraped.0, "HTTP/1.1 200 OK");
    assert!(scraped.1 < READ_TIMEOUT * 2, "{:?}", scraped.1);
}
