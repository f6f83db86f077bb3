//! Operating a running instance from other processes: the daemon from a config file,
//! `stats`/`top`/`status`, live `set` and `allow`, metrics over loopback, SIGKILL and a
//! restart with no gap, then `detach` leaving nothing. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use dns_xdp_testkit::{
    dns::{Client, Responder},
    loader::{self, BpfFs, Loader},
    netns::{LINK, Netns, Pair, SERVER_V4},
    packet::dns_query,
};
use serde_json::Value;

const ABUSER: &str = "198.18.0.10";
const OTHER: &str = "198.18.0.11";

/// Runs a command that must succeed and print one JSON value.
fn json(netns: &Netns, bpffs: &BpfFs, args: &[&str]) -> Value {
    let output = loader::run_command(netns, bpffs, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{args:?}: {error}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn ok(netns: &Netns, bpffs: &BpfFs, args: &[&str]) {
    let output = loader::run_command(netns, bpffs, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Queries from `source`, one at a time; how many were answered.
fn answered(client: &Netns, source: &'static str, count: u16) -> usize {
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), 53);
    client
        .run(move || {
            let client = Client {
                source: Some(source.parse::<IpAddr>().unwrap()),
                timeout: Duration::from_millis(300),
                ..Client::default()
            };
            (0..count)
                .filter(|&id| client.udp(server, &dns_query(id, "example.com")).is_ok())
                .count()
        })
        .unwrap()
}

fn query_udp4(stats: &Value) -> u64 {
    stats["counters"]["query_udp4"].as_u64().unwrap()
}

fn start(netns: &Netns, config: &std::path::Path) -> Loader {
    let mut command = netns.command(loader::binary().to_str().unwrap());
    command.args(["run", "--config", config.to_str().unwrap(), "--json"]);
    let mut daemon = Loader::spawn(command).unwrap();
    daemon
        .next_json(Duration::from_secs(10))
        .expect("the daemon reports");
    daemon
}

/// GET /metrics on the namespace's loopback.
fn scrape(netns: &Netns) -> String {
    netns
        .run(|| {
            let mut stream = TcpStream::connect("127.0.0.1:9553").expect("connecting to metrics");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .unwrap()
}

#[test]
fn a_running_instance_is_operated_from_other_processes_and_survives_sigkill() {
    let pair = Pair::new().unwrap();
    for addr in [ABUSER, OTHER] {
        pair.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", LINK])
            .unwrap();
    }
    let _responder = Responder::serve(&pair.server).unwrap();
    let bpffs = BpfFs::new().unwrap();
    let config = std::env::temp_dir().join(format!("dns-xdp-operate-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "iface = \"{LINK}\"\nrate = \"1000/s\"\nburst = 1000\nbudget = 5000\nstats-interval = 0.1\n\
             metrics-addr = \"127.0.0.1:9553\"\npin-root = \"{}\"\n",
            bpffs.path().display()
        ),
    )
    .unwrap();
    let daemon = start(&pair.server, &config);

    // Generous limits: everything passes; another process sees the counters.
    assert_eq!(answered(&pair.client, ABUSER, 20), 20);
    let stats = json(&pair.server, &bpffs, &["stats", "--iface", LINK, "--json"]);
    assert_eq!(query_udp4(&stats), 20, "{stats}");
    let status = json(&pair.server, &bpffs, &["status", "--iface", LINK, "--json"]);
    assert_eq!(status["xdp"]["name"], "dns_xdp", "{status}");
    assert_eq!(status["egress"][0]["name"], "dns_xdp_egress", "{status}");
    assert_eq!(status["config"]["rate_per_s"], 1000.0, "{status}");
    assert_eq!(status["config"]["budget"]["rate_per_s"], 5000.0, "{status}");
    assert_eq!(status["config"]["budget"]["burst"], 500, "{status}");
    // The source table: its default size in bytes, the abuser's buckets (one per level).
    let table = &status["source_table"];
    assert_eq!(table["slots"], 262_144, "{status}");
    assert_eq!(
        table["bytes"],
        262_144 / dns_xdp_common::SOURCE_WAYS as u64
            * size_of::<dns_xdp_common::SourceLine>() as u64,
        "{status}"
    );
    assert!(table["in_use"].as_u64().is_some_and(|n| n >= 1), "{status}");
    assert_eq!(table["active"], table["in_use"], "{status}");

    // `set` is live: the very next queries obey the new limit.
    ok(
        &pair.server,
        &bpffs,
        &[
            "set", "--iface", LINK, "--rate", "1/min", "--burst", "3", "--budget", "off",
        ],
    );
    assert_eq!(answered(&pair.client, ABUSER, 20), 3, "burst 3 at 1/min");
    let status = json(&pair.server, &bpffs, &["status", "--iface", LINK, "--json"]);
    assert!(status["config"]["budget"].is_null(), "{status}");
    // The live values a restart would undo, against the daemon's file.
    let differ: Vec<&str> = status["drift"]["differ"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    assert_eq!(differ, ["rate_per_s", "burst", "budget"], "{status}");
    let top = json(&pair.server, &bpffs, &["top", "--iface", LINK, "--json"]);
    assert_eq!(top["top"][0]["prefix"], format!("{ABUSER}/32"), "{top}");
    assert_eq!(top["top"][0]["dropped"], 17, "{top}");

    // An allow entry lets the abuser through from the next query on.
    ok(
        &pair.server,
        &bpffs,
        &["allow", "add", ABUSER, "--iface", LINK],
    );
    assert_eq!(answered(&pair.client, ABUSER, 20), 20, "allow-listed");
    let allowed = json(
        &pair.server,
        &bpffs,
        &["allow", "list", "--iface", LINK, "--json"],
    );
    assert_eq!(
        allowed,
        serde_json::json!([{"prefix": format!("{ABUSER}/32"), "hits": 20}])
    );

    // Metrics over loopback, parsed as Prometheus text.
    let response = scrape(&pair.server);
    let body = response.split("\r\n\r\n").nth(1).expect("an HTTP body");
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let sample = |name: &str, wanted: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|sample| {
                sample.metric == name
                    && wanted
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .map(|sample| match sample.value {
                // The parser leaves OpenMetrics counters (`_total` samples) untyped.
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name}{wanted:?} missing from:\n{body}"))
    };
    assert_eq!(
        sample("dns_xdp_packets_total", &[("class", "query_udp4")]),
        60.0
    );
    assert_eq!(
        sample(
            "dns_xdp_query_decisions_total",
            &[("reason", "rate_limited")]
        ),
        17.0
    );
    assert_eq!(
        sample(
            "dns_xdp_top_source_refused_total",
            &[("prefix", "198.18.0.10/32")]
        ),
        17.0
    );
    assert_eq!(
        sample("dns_xdp_list_hits_total", &[("action", "allow")]),
        20.0
    );
    assert_eq!(
        sample(
            "dns_xdp_egress_packets_total",
            &[
                ("direction", "response"),
                ("proto", "udp"),
                ("family", "ipv4")
            ]
        ),
        60.0 - 17.0
    );
    assert!(sample("dns_xdp_source_table_capacity", &[("iface", LINK)]) > 0.0);
    // Sampled queries (one in 100 per decision, the first of each hundred): the first
    // admitted and the first refused query of the run at least.
    assert!(sample("dns_xdp_samples_total", &[("outcome", "taken")]) >= 2.0);
    assert!(
        sample(
            "dns_xdp_sampled_queries_total",
            &[("decision", "limited"), ("qtype", "A")]
        ) >= 1.0
    );
    dashboard_queries_are_served(&scrape);

    // SIGKILL: the programs stay attached through their pins, keep counting and keep
    // enforcing the live limits (1/min, burst 3).
    daemon.kill();
    assert!(pair.server.xdp_attached(LINK));
    assert_eq!(answered(&pair.client, OTHER, 10), 3);
    let stats = json(&pair.server, &bpffs, &["stats", "--iface", LINK, "--json"]);
    assert_eq!(
        query_udp4(&stats),
        70,
        "counted with no daemon running: {stats}"
    );

    // The restarted daemon takes over: counters continue, the file's limits apply again.
    // The source still owes three minutes at 1/min: its first query is refused and the
    // debt beyond one bucket of the raised limit forgiven, the rest pass.
    let daemon = start(&pair.server, &config);
    assert_eq!(answered(&pair.client, OTHER, 10), 9);
    let stats = json(&pair.server, &bpffs, &["stats", "--iface", LINK, "--json"]);
    assert_eq!(query_udp4(&stats), 80, "{stats}");
    let (status, _) = daemon.interrupt().unwrap();
    assert!(status.success());
    assert!(
        pair.server.xdp_attached(LINK),
        "`run` leaves the programs attached on exit"
    );

    // `detach` from any shell leaves nothing: no program, no rule, no pin.
    ok(&pair.server, &bpffs, &["detach", "--iface", LINK]);
    let status = json(&pair.server, &bpffs, &["status", "--iface", LINK, "--json"]);
    assert_eq!(status["xdp"], Value::Null, "{status}");
    assert_eq!(status["egress"], serde_json::json!([]), "{status}");
    assert_eq!(status["conntrack_bypass"], Value::Null, "{status}");
    assert_eq!(status["pins"], Value::Null, "{status}");
    assert!(
        !bpffs.path().join(LINK).exists(),
        "the pin directory is gone"
    );
    let _ = std::fs::remove_file(&config);
}

/// Every query of the packaged Grafana dashboard names metrics this exporter serves, and
/// filters only on labels those series carry.
fn dashboard_queries_are_served(scrape: &prometheus_parse::Scrape) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/dns-xdp.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // The conntrack gauges are served where the daemon's namespace has nf_conntrack
    // loaded (both, or neither).
    let conntrack = scrape
        .samples
        .iter()
        .any(|s| s.metric.starts_with("dns_xdp_conntrack_"));
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            let mut rest = expr;
            while let Some(start) = rest.find("dns_xdp_") {
                let tail = &rest[start..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                let labels: Vec<&str> = tail[end..]
                    .strip_prefix('{')
                    .and_then(|selector| selector.split('}').next())
                    .map(|selector| {
                        selector
                            .split(',')
                            .filter_map(|matcher| matcher.split(['=', '!']).next())
                            .map(str::trim)
                            .filter(|label| !label.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                rest = &tail[end..];
                if name.starts_with("dns_xdp_conntrack_") && !conntrack {
                    continue;
                }
                let series: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
                assert!(
                    !series.is_empty(),
                    "panel {}: {name} is not served",
                    panel["title"]
                );
                for label in labels {
                    assert!(
                        series.iter().any(|s| s.labels.get(label).is_some()),
                        "panel {}: {name} has no label {label}",
                        panel["title"]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} metric references checked");
}
