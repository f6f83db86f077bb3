//! What refused clients ask, on real traffic: a flood of random subdomains of one zone
//! and a run of reverse lookups from a single client, across a veth pair. `top
//! --queries` names the zone and the PTR pattern for the right prefixes, and `dns-xdp
//! log` lines parse as JSON with the documented fields. Needs root.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Stdio,
    time::Duration,
};

use dns_xdp_testkit::{
    dns::Responder,
    loader::{self, BpfFs, Loader},
    netns::{LINK, Pair, SERVER_V4},
};
use serde_json::Value;

const FLOODER: &str = "198.18.0.10";
const REVERSE: &str = "198.18.0.20";
const ZONE: &str = "victim.example";
/// The fields every log line has (README, "Sampled queries").
const LOG_FIELDS: [&str; 17] = [
    "time",
    "iface",
    "source",
    "prefix",
    "decision",
    "level",
    "action",
    "protocol",
    "id",
    "opcode",
    "rd",
    "name",
    "name_status",
    "qtype",
    "qclass",
    "domain",
    "reply_rcode",
];

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend(label.as_bytes());
    }
    query.extend([0, 0, qtype as u8, 0, 1]);
    query
}

/// Sends the two kinds of traffic from the client namespace: `count` random
/// subdomains of `ZONE` from `FLOODER` and `count` PTR lookups from `REVERSE`.
fn send_traffic(pair: &Pair, count: u16) {
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    pair.client
        .run(move || {
            let flooder = UdpSocket::bind((FLOODER.parse::<IpAddr>().unwrap(), 0)).unwrap();
            let reverse = UdpSocket::bind((REVERSE.parse::<IpAddr>().unwrap(), 0)).unwrap();
            for id in 0..count {
                let random = format!("r{:08x}", u32::from(id).wrapping_mul(2_654_435_761));
                flooder
                    .send_to(&query(id, &format!("{random}.{ZONE}"), 1), server)
                    .unwrap();
                let ptr = format!("{}.{}.18.198.in-addr.arpa", id % 250, id / 250);
                reverse.send_to(&query(id, &ptr, 12), server).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .unwrap();
}

#[test]
fn top_queries_names_the_flooded_zone_and_the_reverse_lookups_and_log_lines_are_json() {
    let pair = Pair::new().expect("creating namespaces");
    for addr in [FLOODER, REVERSE] {
        pair.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", LINK])
            .unwrap();
    }
    let _responder = Responder::serve(&pair.server).unwrap();
    let bpffs = BpfFs::new().unwrap();
    let _loader = Loader::attach_pinned(
        &pair.server,
        &bpffs,
        &[
            "--rate", "20/s", "--burst", "10", "--levels", "none", "--sample", "1",
        ],
    )
    .expect("attaching");

    // `top --queries` over a window in which both send.
    let top = std::thread::scope(|scope| {
        let top = scope.spawn(|| {
            loader::run_command(
                &pair.server,
                &bpffs,
                &[
                    "top",
                    "--queries",
                    "--window",
                    "3",
                    "--json",
                    "--iface",
                    LINK,
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        send_traffic(&pair, 400);
        top.join().unwrap()
    });
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let top: Value = serde_json::from_slice(&top.stdout).expect("one JSON object");
    println!("top --queries: {top}");
    let refused = top["refused"].as_array().expect("refused prefixes");
    let find = |prefix: &str| {
        refused
            .iter()
            .find(|entry| entry["prefix"] == format!("{prefix}/32"))
            .unwrap_or_else(|| panic!("{prefix} not among the refused: {top}"))
    };
    let first = |entry: &Value, table: &str| entry[table][0]["key"].as_str().unwrap().to_owned();
    let flooder = find(FLOODER);
    assert_eq!(first(flooder, "domains"), ZONE, "{flooder}");
    assert_eq!(first(flooder, "qtypes"), "A", "{flooder}");
    assert_eq!(first(flooder, "decisions"), "limited", "{flooder}");
    // Every name of the flood is new: none is asked twice.
    assert_eq!(flooder["names"][0]["samples"], 1, "{flooder}");
    let reverse = find(REVERSE);
    assert_eq!(first(reverse, "domains"), "in-addr.arpa", "{reverse}");
    assert_eq!(first(reverse, "qtypes"), "PTR", "{reverse}");
    // 400 queries each, 20/s and a burst of 10 admitted: hundreds refused and sampled.
    for entry in [flooder, reverse] {
        assert!(entry["samples"].as_u64().unwrap() >= 300, "{entry}");
    }
    assert!(top["admitted"]["samples"].as_u64().unwrap() >= 20, "{top}");

    // `dns-xdp log`: one JSON object per line.
    let mut log = pair
        .server
        .command(loader::binary().to_str().unwrap())
        .args(["log", "--iface", LINK, "--count", "200", "--duration", "10"])
        .arg(bpffs.arg())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    send_traffic(&pair, 100);
    let lines: Vec<String> = BufReader::new(log.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(log.wait().unwrap().success());
    assert_eq!(lines.len(), 200, "--count 200 of the 200 queries sent");
    println!("a log line: {}", lines[lines.len() / 2]);
    let mut flood_names = 0;
    for line in &lines {
        let sample: Value = serde_json::from_str(line).expect("a JSON line");
        for field in LOG_FIELDS {
            assert!(sample.get(field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(sample["iface"], LINK);
        humantime::parse_rfc3339(sample["time"].as_str().unwrap()).expect("an RFC 3339 time");
        if sample["source"] == FLOODER {
            assert!(
                sample["name"]
                    .as_str()
                    .unwrap()
                    .ends_with(".victim.example."),
                "{line}"
            );
            assert_eq!(sample["domain"], ZONE);
            flood_names += 1;
        } else {
            assert_eq!(sample["source"], REVERSE, "{line}");
            assert_eq!(sample["qtype"], "PTR", "{line}");
        }
    }
    assert!(flood_names >= 90, "{flood_names} flood samples of 200");
}
