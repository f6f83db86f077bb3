//! End-to-end benchmark (`cargo xtask bench`, after the micro-benchmark): the same
//! workloads against iptables configurations and dns-xdp, on the lab's namespaces.
//!
//! `e2e [OUT_DIR] [--seconds S] [--quick]`: writes e2e.md, e2e.json and e2e.svg to OUT_DIR
//! (default target/bench). Needs root. Fails (non-zero exit) if any configuration did not
//! complete all its points.
//!
//! Configurations (firewall rules in the server namespace only):
//! - `stateful`: INPUT policy DROP, conntrack state rules, `--dport 53 -j ACCEPT`;
//! - `notrack`: raw-table NOTRACK both ways, stateless accepts;
//! - `hashlimit`: notrack + per-source hashlimit above 10/s burst 20 → DROP;
//! - `dns-xdp`: the stateful rules + dns-xdp --rate 10/s --burst 20 --levels none (its
//!   conntrack bypass on);
//! - `dns-xdp+levels+budget`: the same with --levels auto and --budget (the legit maximum
//!   measured first with no firewall).
//!
//! The measuring client (198.18.0.2) is exempt from the per-source limits (hashlimit:
//! an ACCEPT before the limit; dns-xdp: --allow), as a known resolver would be.
//! Workloads: (a) dnsperf alone, as fast as it goes; (b) dnsperf at a fixed rate + a
//! concentrated flood (4 sources); (c) dnsperf at the same rate + a spoofed flood (65 536
//! sources of 198.19.0.0/16, random ports); floods at fixed offered rates and at the
//! generator's maximum.

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use dns_xdp_lab::lab::{
    Dnsperf, Firewall, Snapshot, World, catch_interrupts, dns_xdp_binary, finish_dnsperf,
    interrupted, start_dnsperf, start_nsd, user_hz,
};
use dns_xdp_testkit::{
    flood::{Flood, Kind},
    loader::{BpfFs, Loader},
    netns::{CLIENT_V4, LINK},
};
use serde_json::{Value, json};

const FLOOD_RATES: &[Option<u64>] = &[
    Some(25_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    None,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Stateful,
    Notrack,
    Hashlimit,
    DnsXdp,
    DnsXdpLevels,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Stateful,
        Config::Notrack,
        Config::Hashlimit,
        Config::DnsXdp,
        Config::DnsXdpLevels,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Stateful => "stateful",
            Config::Notrack => "notrack",
            Config::Hashlimit => "hashlimit",
            Config::DnsXdp => "dns-xdp",
            Config::DnsXdpLevels => "dns-xdp+levels+budget",
        }
    }

    fn firewall(self) -> Firewall {
        match self {
            Config::Stateful | Config::DnsXdp | Config::DnsXdpLevels => Firewall::Stateful,
            Config::Notrack => Firewall::Notrack,
            Config::Hashlimit => Firewall::Hashlimit {
                rate: 10,
                burst: 20,
            },
        }
    }
}

/// One measured point.
struct Point {
    workload: &'static str,
    flood: Option<Kind>,
    offered: Option<u64>,
    flood_sent_rate: f64,
    legit: Dnsperf,
    /// Queries dnsperf was asked to send (rate × duration), 0 when unthrottled.
    legit_offered: u64,
    seconds: f64,
    delta: Snapshot,
    after: Snapshot,
    xdp_dropped: u64,
    xdp_packets: u64,
}

impl Point {
    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.seconds
    }

    /// Where the flood went, per second: lost in the veth ring, dropped in XDP, by
    /// netfilter rules, by conntrack (table full), at the socket.
    fn drops_per_second(&self) -> [f64; 5] {
        [
            self.delta.veth_ring_drops,
            self.xdp_dropped,
            self.delta.netfilter_dropped,
            self.delta.conntrack_drop + self.delta.conntrack_early_drop,
            self.delta.udp_rcvbuf_errors,
        ]
        .map(|count| self.per_second(count))
    }

    fn softirq_seconds(&self) -> f64 {
        self.delta.softirq_ticks as f64 / user_hz()
    }

    /// Legit queries answered, as a share of those it was meant to send: dnsperf sends
    /// fewer when its outstanding queries pile up (slow or lost answers) or it is short
    /// of CPU, which is part of the damage.
    fn answered_pct(&self) -> f64 {
        let base = self.legit.sent.max(self.legit_offered);
        if base == 0 {
            0.0
        } else {
            100.0 * self.legit.completed as f64 / base as f64
        }
    }

    fn json(&self) -> Value {
        let [ring, xdp, netfilter, conntrack, socket] = self.drops_per_second();
        json!({
            "workload": self.workload,
            "flood": self.flood.map(Kind::name),
            "offered_pps": self.offered,
            "flood_sent_pps": self.flood_sent_rate,
            "legit": self.legit,
            "legit_offered": self.legit_offered,
            "legit_answered_pct": self.answered_pct(),
            "seconds": self.seconds,
            "server_rx_pps": self.per_second(self.delta.rx_packets),
            "veth_ring_drops_pps": ring,
            "dropped_pps": {
                "xdp": xdp,
                "netfilter": netfilter,
                "conntrack_table_full": conntrack,
                "socket_rcvbuf": socket,
            },
            "xdp_packets": self.xdp_packets,
            "softirq_cpu_s": self.softirq_seconds(),
            "net_rx_softirqs": self.delta.net_rx,
            "udp_in_datagrams": self.delta.udp_in_datagrams,
            "conntrack_entries_end": self.after.conntrack_entries,
            "conntrack_drop": self.delta.conntrack_drop,
            "conntrack_early_drop": self.delta.conntrack_early_drop,
            "conntrack_insert_failed": self.delta.conntrack_insert_failed,
        })
    }
}

fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    Snapshot {
        softirq_ticks: after.softirq_ticks.saturating_sub(before.softirq_ticks),
        net_rx: after.net_rx.saturating_sub(before.net_rx),
        udp_rcvbuf_errors: after
            .udp_rcvbuf_errors
            .saturating_sub(before.udp_rcvbuf_errors),
        udp_in_datagrams: after
            .udp_in_datagrams
            .saturating_sub(before.udp_in_datagrams),
        netfilter_dropped: after
            .netfilter_dropped
            .saturating_sub(before.netfilter_dropped),
        conntrack_drop: after.conntrack_drop.saturating_sub(before.conntrack_drop),
        conntrack_early_drop: after
            .conntrack_early_drop
            .saturating_sub(before.conntrack_early_drop),
        conntrack_insert_failed: after
            .conntrack_insert_failed
            .saturating_sub(before.conntrack_insert_failed),
        conntrack_entries: after.conntrack_entries,
        rx_packets: after.rx_packets.saturating_sub(before.rx_packets),
        veth_ring_drops: after.veth_ring_drops.saturating_sub(before.veth_ring_drops),
    }
}

/// The XDP drop counters of a dns-xdp report, summed.
fn xdp_dropped(report: &Value) -> u64 {
    let counters = &report["counters"];
    [
        "rate_limited",
        "denied",
        "budget_shed_heavy",
        "budget_shed_light",
        "not_query_short",
        "not_query_response",
        "not_query_opcode",
        "not_query_qdcount",
    ]
    .iter()
    .filter_map(|name| counters[*name].as_u64())
    .sum()
}

struct Bench {
    world: World,
    seconds: u64,
    legit_rate: u64,
}

impl Bench {
    fn point(
        &self,
        loader: &mut Option<Loader>,
        workload: &'static str,
        flood: Option<Kind>,
        offered: Option<u64>,
        legit_rate: Option<u64>,
    ) -> anyhow::Result<Point> {
        if interrupted() {
            bail!("interrupted");
        }
        let _ = self.world.in_server("conntrack", &["-F"]);
        thread::sleep(Duration::from_millis(300));
        let xdp_before = match loader {
            Some(loader) => Some(loader.latest_json(Duration::from_secs(3))?),
            None => None,
        };
        let before = Snapshot::take(&self.world)?;
        let started = Instant::now();
        let running = match flood {
            Some(kind) => Some(Flood::start(&self.world.flood_spec(kind, offered)?)?),
            None => None,
        };
        let (dnsperf, out) = start_dnsperf(&self.world, legit_rate, self.seconds, workload)?;
        let legit = finish_dnsperf(dnsperf, &out, self.seconds);
        let flood_report = running.map(Flood::stop).transpose()?;
        let seconds = started.elapsed().as_secs_f64();
        let after = Snapshot::take(&self.world)?;
        let legit = legit?;
        let (xdp_dropped, xdp_packets) = match (loader, xdp_before) {
            (Some(loader), Some(before)) => {
                thread::sleep(Duration::from_millis(600));
                let now = loader.latest_json(Duration::from_secs(3))?;
                (
                    xdp_dropped(&now).saturating_sub(xdp_dropped(&before)),
                    now["counters"]["packets"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(before["counters"]["packets"].as_u64().unwrap_or(0)),
                )
            }
            _ => (0, 0),
        };
        let point = Point {
            workload,
            flood,
            offered,
            flood_sent_rate: flood_report.map_or(0.0, |report| report.rate()),
            legit,
            legit_offered: legit_rate.map_or(0, |rate| rate * self.seconds),
            seconds,
            delta: delta(&before, &after),
            after,
            xdp_dropped,
            xdp_packets,
        };
        let [ring, xdp, netfilter, conntrack, socket] = point.drops_per_second();
        println!(
            "  {workload:<32} flood {:>9} sent {:>9.0}/s | legit {:>7}/{:<7} answered ({:5.1} % of offered), p50 {:.2} ms p99 {:.2} ms | drops/s ring {:.0} xdp {:.0} nf {:.0} ct {:.0} sock {:.0} | softirq {:.2} s | ct entries {}",
            offered.map_or("max".to_owned(), |rate| rate.to_string()),
            point.flood_sent_rate,
            point.legit.completed,
            point.legit.sent,
            point.answered_pct(),
            point.legit.p50_ms,
            point.legit.p99_ms,
            ring,
            xdp,
            netfilter,
            conntrack,
            socket,
            point.softirq_seconds(),
            point.after.conntrack_entries,
        );
        Ok(point)
    }

    fn attach(&self, bpffs: &BpfFs, extra: &[&str]) -> anyhow::Result<Loader> {
        let binary = dns_xdp_binary()?;
        let mut command = self
            .world
            .server
            .command(binary.to_str().context("non-UTF-8 path")?);
        command
            .args([
                "attach",
                "--iface",
                LINK,
                "--json",
                "--stats-interval",
                "0.5",
            ])
            .args(["--metrics-addr", "off", "--top", "3"])
            .args(["--allow", &format!("{CLIENT_V4}/32")])
            .arg(bpffs.arg())
            .args(extra)
            .process_group(0);
        let mut loader = Loader::spawn(command)?;
        loader
            .next_json(Duration::from_secs(15))
            .context("dns-xdp did not attach")?;
        Ok(loader)
    }

    fn run_config(&self, config: Config, budget: Option<u64>) -> anyhow::Result<Vec<Point>> {
        println!("\nconfiguration {}", config.name());
        config.firewall().apply(&self.world)?;
        let bpffs = BpfFs::new()?;
        let budget_text = budget.unwrap_or(0).to_string();
        let mut loader = match config {
            Config::DnsXdp => Some(self.attach(
                &bpffs,
                &["--rate", "10/s", "--burst", "20", "--levels", "none"],
            )?),
            Config::DnsXdpLevels => {
                let mut extra = vec!["--rate", "10/s", "--burst", "20", "--levels", "auto"];
                if budget.is_some() {
                    extra.extend(["--budget", &budget_text]);
                }
                Some(self.attach(&bpffs, &extra)?)
            }
            _ => None,
        };
        let mut points = vec![self.point(&mut loader, "(a) legit only, max", None, None, None)?];
        for kind in [Kind::Concentrated, Kind::Spoofed] {
            let workload = match kind {
                Kind::Concentrated => "(b) legit + concentrated flood",
                Kind::Spoofed => "(c) legit + spoofed flood",
            };
            for &offered in FLOOD_RATES {
                points.push(self.point(
                    &mut loader,
                    workload,
                    Some(kind),
                    offered,
                    Some(self.legit_rate),
                )?);
            }
        }
        if let Some(loader) = loader {
            loader
                .interrupt()
                .context("dns-xdp did not detach cleanly")?;
        }
        Ok(points)
    }
}

/// The end-to-end comparison: dns-xdp against the kernel's stateful, NOTRACK and
/// hashlimit configurations, under floods, in namespaces.
#[derive(clap::Parser)]
struct Args {
    /// Where e2e.md, e2e.json and e2e.svg are written.
    #[arg(default_value = "target/bench")]
    out_dir: PathBuf,
    /// Seconds per measured point.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=60))]
    seconds: u64,
    /// The legitimate clients' queries/s under floods (0: half of what the server sustains).
    #[arg(long, default_value_t = 0)]
    legit_rate: u64,
    /// Run only these configurations (repeatable), e.g. `--only dns-xdp`.
    #[arg(long)]
    only: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let Args {
        out_dir,
        seconds,
        legit_rate,
        only,
    } = <Args as clap::Parser>::parse();
    catch_interrupts();
    let started = Instant::now();
    let world = World::new()?;
    // NAPI on the server's veth for the configurations without XDP (see flood.rs).
    world.server_gro(true)?;
    let _nsd = start_nsd(&world)?;
    let mut bench = Bench {
        world,
        seconds,
        legit_rate,
    };

    let ceiling = generator_ceiling(&bench)?;
    println!(
        "flood generator ceiling (spoofed, receiver drops in XDP): {:.0} frames/s offered, {:.0}/s received by the server's veth",
        ceiling.0, ceiling.1
    );

    // Calibration: what the server sustains with no firewall (dnsperf as fast as it
    // goes); floods then run against half of it, and the budget is set to it.
    Firewall::None.apply(&bench.world)?;
    let calibration = bench.point(&mut None, "calibration, legit only", None, None, None)?;
    if bench.legit_rate == 0 {
        bench.legit_rate =
            ((calibration.legit.qps / 2.0 / 1000.0).round() as u64 * 1000).clamp(1000, 20_000);
    }
    let budget = calibration.legit.qps.round() as u64;
    println!(
        "legit rate under floods: {} queries/s; budget {} queries/s",
        bench.legit_rate, budget
    );
    let mut results: Vec<(Config, Vec<Point>)> = Vec::new();
    let selected: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|config| only.is_empty() || only.iter().any(|name| name == config.name()))
        .collect();
    anyhow::ensure!(!selected.is_empty(), "--only names no configuration");
    for &config in &selected {
        let points = bench
            .run_config(config, Some(budget))
            .with_context(|| format!("configuration {} did not run", config.name()))?;
        results.push((config, points));
    }
    let missing: Vec<_> = selected
        .iter()
        .filter(|config| {
            !results
                .iter()
                .any(|(done, points)| done == *config && points.len() == 1 + 2 * FLOOD_RATES.len())
        })
        .map(|config| config.name())
        .collect();
    if !missing.is_empty() {
        bail!("configurations that did not run completely: {missing:?}");
    }
    write_results(&out_dir, &bench, &results, ceiling, Some(budget), started)?;
    Ok(())
}

/// The generator as fast as it goes into a receiver that drops everything in XDP:
/// (frames/s sent, frames/s the server's veth received).
fn generator_ceiling(bench: &Bench) -> anyhow::Result<(f64, f64)> {
    Firewall::None.apply(&bench.world)?;
    let bpffs = BpfFs::new()?;
    let loader = bench.attach(&bpffs, &["--deny", "198.19.0.0/16"])?;
    let before = Snapshot::take(&bench.world)?;
    let flood = Flood::start(&bench.world.flood_spec(Kind::Spoofed, None)?)?;
    thread::sleep(Duration::from_secs(3));
    let report = flood.stop()?;
    let after = Snapshot::take(&bench.world)?;
    loader.interrupt()?;
    Ok((
        report.rate(),
        (after.rx_packets - before.rx_packets) as f64 / report.elapsed.as_secs_f64(),
    ))
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} vCPU ({cpu}), Linux {}", kernel.trim())
}

fn write_results(
    out_dir: &std::path::Path,
    bench: &Bench,
    results: &[(Config, Vec<Point>)],
    ceiling: (f64, f64),
    budget: Option<u64>,
    started: Instant,
) -> anyhow::Result<()> {
    let mut md = String::new();
    writeln!(
        md,
        "End-to-end benchmark: {}; {} s per point; legit load (dnsperf, allow-listed client) at {} queries/s under floods; \
         the flood generator reached {:.2} Mpps offered ({:.2} Mpps received by the server's veth) into an XDP drop; \
         dns-xdp+levels+budget used --budget {}.\n",
        machine(),
        bench.seconds,
        bench.legit_rate,
        ceiling.0 / 1e6,
        ceiling.1 / 1e6,
        budget.map_or("(none)".to_owned(), |b| format!("{b}/s")),
    )?;
    summary(&mut md, results)?;
    writeln!(md, "\nEvery point:\n")?;
    writeln!(
        md,
        "| configuration | workload | flood offered pps | flood sent pps | veth ring drops/s | legit answered / sent | % of offered legit | p50 ms | p99 ms | XDP drops/s | netfilter drops/s | conntrack full drops/s | socket drops/s | softirq CPU s | conntrack entries |"
    )?;
    writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let mut json_results = Vec::new();
    for (config, points) in results {
        for point in points {
            let [ring, xdp, netfilter, conntrack, socket] = point.drops_per_second();
            writeln!(
                md,
                "| {} | {} | {} | {:.0} | {ring:.0} | {}/{} | {:.1} | {:.2} | {:.2} | {xdp:.0} | {netfilter:.0} | {conntrack:.0} | {socket:.0} | {:.2} | {} |",
                config.name(),
                point.workload,
                match (point.flood, point.offered) {
                    (None, _) => "-".to_owned(),
                    (Some(_), None) => "max".to_owned(),
                    (Some(_), Some(rate)) => rate.to_string(),
                },
                point.flood_sent_rate,
                point.legit.completed,
                point.legit.sent,
                point.answered_pct(),
                point.legit.p50_ms,
                point.legit.p99_ms,
                point.softirq_seconds(),
                point.after.conntrack_entries,
            )?;
            let mut value = point.json();
            value["configuration"] = json!(config.name());
            json_results.push(value);
        }
    }
    writeln!(
        md,
        "\nSoftirq CPU is the whole machine's (/proc/stat) over the point: on veth the receive path runs in softirq on the sending CPU. \
         Total bench time {:.0} s.",
        started.elapsed().as_secs_f64()
    )?;
    fs::create_dir_all(out_dir)?;
    fs::write(out_dir.join("e2e.md"), &md)?;
    let json = json!({
        "machine": machine(),
        "seconds_per_point": bench.seconds,
        "legit_rate": bench.legit_rate,
        "budget": budget,
        "generator_ceiling_pps": {"sent": ceiling.0, "received": ceiling.1},
        "points": json_results,
    });
    fs::write(
        out_dir.join("e2e.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    fs::write(out_dir.join("e2e.svg"), chart(results)?)?;
    println!("\n{md}");
    println!("written to {}", out_dir.join("e2e.{md,json,svg}").display());
    Ok(())
}

/// The headline tables: legit answered (% of offered) and p99 latency by flood rate, and
/// where the flood was dropped at 200 000 pps.
fn summary(md: &mut String, results: &[(Config, Vec<Point>)]) -> std::fmt::Result {
    let rate_name =
        |offered: Option<u64>| offered.map_or("max".to_owned(), |r| format!("{}k", r / 1000));
    for (kind, title) in [
        (
            Kind::Concentrated,
            "(b) legit + concentrated flood (4 sources)",
        ),
        (Kind::Spoofed, "(c) legit + spoofed flood (65 536 sources)"),
    ] {
        writeln!(
            md,
            "{title}: legit answered, % of offered (p99 latency ms)\n"
        )?;
        let mut header = "| configuration | (a) no flood, max qps |".to_owned();
        let mut rule = "|---|---:|".to_owned();
        for &offered in FLOOD_RATES {
            header.push_str(&format!(" {} |", rate_name(offered)));
            rule.push_str("---:|");
        }
        writeln!(md, "{header}\n{rule}")?;
        for (config, points) in results {
            let max_qps = points
                .iter()
                .find(|point| point.flood.is_none())
                .map_or(0.0, |point| point.legit.qps);
            let mut row = format!("| {} | {max_qps:.0} |", config.name());
            for point in points.iter().filter(|point| point.flood == Some(kind)) {
                row.push_str(&format!(
                    " {:.1} ({:.0}) |",
                    point.answered_pct(),
                    point.legit.p99_ms
                ));
            }
            writeln!(md, "{row}")?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "Where the flood went at 200k offered (per second: lost in the veth ring / dropped in XDP / by netfilter rules / by conntrack, table full / at the socket, receive buffer full; server softirq CPU seconds over the point)\n"
    )?;
    writeln!(
        md,
        "| configuration | flood | ring | XDP | netfilter | conntrack full | socket | softirq s | conntrack entries |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for (config, points) in results {
        for point in points.iter().filter(|point| point.offered == Some(200_000)) {
            let [ring, xdp, netfilter, conntrack, socket] = point.drops_per_second();
            writeln!(
                md,
                "| {} | {} | {ring:.0} | {xdp:.0} | {netfilter:.0} | {conntrack:.0} | {socket:.0} | {:.2} | {} |",
                config.name(),
                point.flood.map_or("-", Kind::name),
                point.softirq_seconds(),
                point.after.conntrack_entries,
            )?;
        }
    }
    Ok(())
}

/// Legit answered (%) against offered flood rate, one line per configuration, one panel
/// per flood kind, drawn with plotters into an SVG document.
fn chart(results: &[(Config, Vec<Point>)]) -> anyhow::Result<String> {
    use plotters::prelude::*;
    const COLORS: [RGBColor; 5] = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
    ];
    let labels = ["25k", "50k", "100k", "200k", "max"];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 430)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Legit queries answered (%) vs offered flood rate",
            ("sans-serif", 15),
        )?;
        let panels = root.split_evenly((1, 2));
        for (area, (kind, title)) in panels.iter().zip([
            (Kind::Concentrated, "(b) concentrated flood, 4 sources"),
            (Kind::Spoofed, "(c) spoofed flood, 65 536 sources"),
        ]) {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 12))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(36)
                .build_cartesian_2d(0usize..labels.len() - 1, 0f64..100f64)?;
            chart
                .configure_mesh()
                .x_labels(labels.len())
                .x_label_formatter(&|index| labels.get(*index).copied().unwrap_or("").to_owned())
                .x_desc("offered flood (packets/s)")
                .y_desc("legit answered (%)")
                .draw()?;
            for (line, (config, points)) in results.iter().enumerate() {
                let color = COLORS[line % COLORS.len()];
                let series: Vec<(usize, f64)> = points
                    .iter()
                    .filter(|point| point.flood == Some(kind))
                    .enumerate()
                    .map(|(index, point)| (index, point.answered_pct()))
                    .collect();
                chart
                    .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                    .label(config.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    series
                        .into_iter()
                        .map(|point| Circle::new(point, 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dns_xdp_lab::lab::{Dnsperf, Snapshot};

    fn point(flood: Option<Kind>, completed: u64) -> Point {
        Point {
            workload: "test",
            flood,
            offered: Some(25_000),
            flood_sent_rate: 0.0,
            legit: Dnsperf {
                sent: 100,
                completed,
                ..Dnsperf::default()
            },
            legit_offered: 100,
            seconds: 1.0,
            delta: Snapshot::default(),
            after: Snapshot::default(),
            xdp_dropped: 0,
            xdp_packets: 0,
        }
    }

    #[test]
    fn the_chart_is_an_svg_with_a_line_and_a_label_per_configuration() {
        let results: Vec<(Config, Vec<Point>)> = Config::ALL
            .into_iter()
            .map(|config| {
                let points = [Kind::Concentrated, Kind::Spoofed]
                    .into_iter()
                    .flat_map(|kind| (0..5).map(move |step| point(Some(kind), 100 - step * 10)))
                    .collect();
                (config, points)
            })
            .collect();
        let svg = chart(&results).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for (config, _) in &results {
            assert!(
                svg.contains(config.name()),
                "no label for {}",
                config.name()
            );
        }
        // Two panels, each with a marked point per configuration and flood rate.
        assert_eq!(svg.matches("<circle").count(), 2 * results.len() * 5);
    }
}
