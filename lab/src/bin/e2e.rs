//! End-to-end benchmark (`cargo xtask bench`, after the micro-benchmark): the same
//! workloads against iptables configurations and dns-xdp, on the lab's namespaces.
//!
//! `e2e [OUT_DIR] [--seconds S] [--legit-rate QPS] [--only CONFIG]... [--random-only]
//! [--budget QPS] [--budget-burst N] [--random-budget QPS]`: writes e2e.md, e2e.json and e2e.svg to OUT_DIR
//! (default target/bench). Needs root. Fails (non-zero exit) if any configuration did not
//! complete all its points.
//!
//! Configurations (firewall rules in the server namespace only):
//! - `stateful`: INPUT policy DROP, conntrack state rules, `--dport 53 -j ACCEPT`;
//! - `notrack`: raw-table NOTRACK both ways, stateless accepts;
//! - `hashlimit`: notrack + per-source hashlimit above 10/s burst 20 → DROP;
//! - `dns-xdp`: the stateful rules, DNS over TCP accepted whatever its state (its
//!   conntrack bypass leaves it untracked) + dns-xdp --rate 10/s --burst 20 --levels none;
//! - `dns-xdp+levels+budget`: the same with --levels auto and --budget (the legit maximum
//!   measured first with no firewall, unless set with `--budget`).
//!
//! The measuring client (198.18.0.2) is exempt from the per-source limits (hashlimit:
//! an ACCEPT before the limit; dns-xdp: --allow), as a known resolver would be.
//! Workloads: (a) dnsperf alone, as fast as it goes; (b) dnsperf at a fixed rate + a
//! concentrated flood (4 sources); (c) dnsperf at the same rate + a spoofed flood (65 536
//! sources of 198.19.0.0/16, random ports); (d) dnsperf at the same rate + a random
//! flood (sources from the whole IPv4 unicast space: no prefix level concentrates it,
//! only the budget can act); floods at fixed offered rates and at the generator's maximum,
//! (d) also at rates past ten times the budget.
//!
//! In (d), `dns-xdp+levels+budget` runs twice, the client not allow-listed (an
//! allow-listed client bypasses the budget): "proven" (default --proof-ttl; before each
//! point the client makes one TCP query, which proves its address) and "unproven"
//! (--proof-ttl 0, no TCP), with a budget of its own: 2.5 times the legit rate unless
//! set with `--random-budget`. The calibrated maximum is what the server answers with no
//! flood; under a flood the flood's receive path takes the same two CPUs and the server
//! answers far less, so a budget set to the calibrated maximum is never what sheds
//! (measured: 74 % answered proven or not, the loss at the server's socket), and the
//! budget must be set below what the server sustains under attack, as an operator
//! would. Its per-source rate is raised there to twice the legit rate
//! (levels auto: 4x and 32x that), so the one measuring client, which stands for many,
//! is not refused by a per-source bucket; the random flood's sources, each sending a
//! packet or so, are light at any of these rates. `dns-xdp` keeps its allow-listed
//! client in (d): it has no budget to bypass.

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
    Dnsperf, Firewall, QNAME, Snapshot, World, catch_interrupts, dns_xdp_binary, finish_dnsperf,
    interrupted, start_dnsperf, start_nsd, user_hz,
};
use dns_xdp_testkit::{
    flood::{Flood, Kind},
    loader::{BpfFs, Loader},
    netns::{CLIENT_V4, LINK, SERVER_V4},
    process::output,
};
use serde_json::{Value, json};

const FLOOD_RATES: &[Option<u64>] = &[
    Some(25_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    None,
];

/// The random flood's offered rates: the other floods' fixed rates, then 500k and at
/// least ten times the budget (1M, or more for a budget over 100 000/s), then the
/// generator's maximum.
fn random_rates(budget: u64) -> Vec<Option<u64>> {
    let tenfold = (budget * 10).div_ceil(100_000) * 100_000;
    let mut rates: Vec<Option<u64>> = FLOOD_RATES.iter().copied().flatten().map(Some).collect();
    rates.extend([Some(500_000), Some(tenfold.max(1_000_000)), None]);
    rates
}

/// The random flood's workload names: the client as in (b) and (c), then proven and
/// unproven, not allow-listed (`dns-xdp+levels+budget`).
const RANDOM: &str = "(d) legit + random flood";
const RANDOM_PROVEN: &str = "(d) legit + random flood, client proven (TCP)";
const RANDOM_UNPROVEN: &str = "(d) legit + random flood, client unproven";

/// dns-xdp counters whose change over a point is reported with it (the budget's
/// decisions, proofs, refusals, slips).
const XDP_COUNTERS: &[&str] = &[
    "allowed",
    "rate_passed",
    "rate_limited",
    "budget_served_proven",
    "budget_served_unproven",
    "budget_shed_light",
    "budget_shed_heavy",
    "budget_shed_proven",
    "budget_slipped",
    "slip_capped",
    "rate_contended",
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
            Config::Stateful => Firewall::Stateful,
            // dns-xdp's NOTRACK rules need DNS over TCP accepted statelessly (the client
            // proves its address over TCP in (d)); UDP is already.
            Config::DnsXdp | Config::DnsXdpLevels => Firewall::StatefulUntracked,
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
    /// (d) in `dns-xdp+levels+budget`: whether the client proved its address (not
    /// allow-listed either way); `None` elsewhere.
    proof: Option<bool>,
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
    /// dns-xdp's `XDP_COUNTERS` over the point, `proved_tcp` (egress) and the
    /// `proven_sources` at its end; `Value::Null` without dns-xdp.
    xdp_counters: Value,
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
            "client_proven": self.proof,
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
            "xdp_counters": self.xdp_counters,
        })
    }

    /// A dns-xdp counter's change over the point (0 without dns-xdp).
    fn xdp(&self, name: &str) -> u64 {
        self.xdp_counters[name].as_u64().unwrap_or(0)
    }

    /// The row name of its configuration in the tables: the configuration, and for (d)
    /// in `dns-xdp+levels+budget` whether the client was proven.
    fn row(&self, config: Config) -> String {
        match self.proof {
            None => config.name().to_owned(),
            Some(true) => format!("{} (client proven)", config.name()),
            Some(false) => format!("{} (client unproven)", config.name()),
        }
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
        "budget_shed_proven",
        "not_query_short",
        "not_query_response",
        "not_query_opcode",
        "not_query_qdcount",
    ]
    .iter()
    .filter_map(|name| counters[*name].as_u64())
    .sum()
}

/// What `XDP_COUNTERS` did between two reports, with `proved_tcp` (egress) and the
/// proven sources at the second.
fn xdp_counters(before: &Value, after: &Value) -> Value {
    let mut counters: serde_json::Map<String, Value> = XDP_COUNTERS
        .iter()
        .map(|&name| {
            let count = |report: &Value| report["counters"][name].as_u64().unwrap_or(0);
            (
                name.to_owned(),
                json!(count(after).saturating_sub(count(before))),
            )
        })
        .collect();
    let proved = |report: &Value| report["egress"]["proved_tcp"].as_u64().unwrap_or(0);
    counters.insert(
        "proved_tcp".into(),
        json!(proved(after).saturating_sub(proved(before))),
    );
    counters.insert("proven_sources".into(), after["proven_sources"].clone());
    counters.into()
}

struct Bench {
    world: World,
    seconds: u64,
    legit_rate: u64,
    budget: u64,
    /// Whether `budget` was set on the command line rather than calibrated.
    budget_set: bool,
    /// `--budget-burst` for dns-xdp; 0: its default (a tenth of a second of the budget).
    budget_burst: u64,
    /// The budget of the random flood's `dns-xdp+levels+budget` runs.
    random_budget: u64,
    random_rates: Vec<Option<u64>>,
    random_only: bool,
}

impl Bench {
    /// The client proves its address: one query over TCP (dig), which makes the server
    /// send it TCP data; then waits for dns-xdp's report to count a proven source.
    fn prove(&self, loader: &mut Loader) -> anyhow::Result<()> {
        let answer = output(self.world.client.command("dig").args([
            "+tcp",
            "+short",
            "+tries=1",
            "+time=2",
            &format!("@{SERVER_V4}"),
            QNAME,
        ]))
        .context("the client's TCP query (its proof)")?;
        anyhow::ensure!(
            answer.trim() == "198.18.0.80",
            "the client's TCP query was not answered: {answer:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let report = loader.latest_json(Duration::from_secs(3))?;
            if report["proven_sources"].as_u64().unwrap_or(0) >= 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dns-xdp counts no proven source after the client's TCP query: proved_tcp {}",
                    report["egress"]["proved_tcp"]
                );
            }
        }
    }

    fn point(
        &self,
        loader: &mut Option<Loader>,
        workload: &'static str,
        proof: Option<bool>,
        flood: Option<Kind>,
        offered: Option<u64>,
        legit_rate: Option<u64>,
    ) -> anyhow::Result<Point> {
        if interrupted() {
            bail!("interrupted");
        }
        let _ = self.world.in_server("conntrack", &["-F"]);
        if let (Some(true), Some(loader)) = (proof, loader.as_mut()) {
            self.prove(loader)?;
        }
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
        let (xdp_dropped, xdp_packets, xdp_counters) = match (loader, xdp_before) {
            (Some(loader), Some(before)) => {
                thread::sleep(Duration::from_millis(600));
                let now = loader.latest_json(Duration::from_secs(3))?;
                (
                    xdp_dropped(&now).saturating_sub(xdp_dropped(&before)),
                    now["counters"]["packets"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(before["counters"]["packets"].as_u64().unwrap_or(0)),
                    xdp_counters(&before, &now),
                )
            }
            _ => (0, 0, Value::Null),
        };
        let point = Point {
            workload,
            proof,
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
            xdp_counters,
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
        if !point.xdp_counters.is_null() {
            let per_second = |name: &str| point.per_second(point.xdp(name));
            println!(
                "  {:<32} dns-xdp/s: budget served proven {:.0} unproven {:.0}, shed {:.0} (proven {:.0}), slipped {:.0} | rate-limited {:.0} contended {:.0} allowed {:.0} | proved_tcp {} proven sources {}",
                "",
                per_second("budget_served_proven"),
                per_second("budget_served_unproven"),
                per_second("budget_shed_light") + per_second("budget_shed_heavy"),
                per_second("budget_shed_proven"),
                per_second("budget_slipped"),
                per_second("rate_limited"),
                per_second("rate_contended"),
                per_second("allowed"),
                point.xdp("proved_tcp"),
                point.xdp("proven_sources"),
            );
        }
        Ok(point)
    }

    /// `dns-xdp attach` in the server namespace with `extra` options, the client
    /// allow-listed if `allow_client`.
    fn attach(&self, bpffs: &BpfFs, allow_client: bool, extra: &[&str]) -> anyhow::Result<Loader> {
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
            .args(if allow_client {
                vec!["--allow".to_owned(), format!("{CLIENT_V4}/32")]
            } else {
                Vec::new()
            })
            .arg(bpffs.arg())
            .args(extra)
            .process_group(0);
        let mut loader = Loader::spawn(command)?;
        loader
            .next_json(Duration::from_secs(15))
            .context("dns-xdp did not attach")?;
        Ok(loader)
    }

    /// dns-xdp's budget options in `dns-xdp+levels+budget`.
    fn budget_args(&self) -> Vec<String> {
        self.budget_args_of(self.budget)
    }

    /// dns-xdp's budget options for a budget of `budget` queries/s.
    fn budget_args_of(&self, budget: u64) -> Vec<String> {
        let mut args = vec!["--budget".to_owned(), budget.to_string()];
        if self.budget_burst > 0 {
            args.extend(["--budget-burst".to_owned(), self.budget_burst.to_string()]);
        }
        args
    }

    /// The points a configuration makes: (a), (b) and (c) at every flood rate (unless
    /// `random_only`), (d) at every random rate, twice for `dns-xdp+levels+budget`.
    fn expected_points(&self, config: Config) -> usize {
        let floods = if self.random_only {
            0
        } else {
            2 * FLOOD_RATES.len()
        };
        let random_runs = if config == Config::DnsXdpLevels { 2 } else { 1 };
        1 + floods + random_runs * self.random_rates.len()
    }

    fn run_config(&self, config: Config) -> anyhow::Result<Vec<Point>> {
        println!("\nconfiguration {}", config.name());
        config.firewall().apply(&self.world)?;
        let bpffs = BpfFs::new()?;
        let budget_args = self.budget_args();
        let budget_args: Vec<&str> = budget_args.iter().map(String::as_str).collect();
        let mut loader = match config {
            Config::DnsXdp => Some(self.attach(
                &bpffs,
                true,
                &["--rate", "10/s", "--burst", "20", "--levels", "none"],
            )?),
            Config::DnsXdpLevels => Some(
                self.attach(
                    &bpffs,
                    true,
                    &[
                        &["--rate", "10/s", "--burst", "20", "--levels", "auto"],
                        &budget_args[..],
                    ]
                    .concat(),
                )?,
            ),
            _ => None,
        };
        let mut points =
            vec![self.point(&mut loader, "(a) legit only, max", None, None, None, None)?];
        let floods: &[Kind] = if self.random_only {
            &[]
        } else {
            &[Kind::Concentrated, Kind::Spoofed]
        };
        for &kind in floods {
            let workload = match kind {
                Kind::Concentrated => "(b) legit + concentrated flood",
                _ => "(c) legit + spoofed flood",
            };
            for &offered in FLOOD_RATES {
                points.push(self.point(
                    &mut loader,
                    workload,
                    None,
                    Some(kind),
                    offered,
                    Some(self.legit_rate),
                )?);
            }
        }
        if config != Config::DnsXdpLevels {
            for &offered in &self.random_rates {
                points.push(self.point(
                    &mut loader,
                    RANDOM,
                    None,
                    Some(Kind::Random),
                    offered,
                    Some(self.legit_rate),
                )?);
            }
        }
        detach(loader)?;
        if config == Config::DnsXdpLevels {
            // The client not allow-listed, proven or not: only the budget's tiers set it
            // apart from the flood (see the module's documentation for the rate and
            // the budget).
            let rate = format!("{}/s", 2 * self.legit_rate);
            let burst = (2 * self.legit_rate).to_string();
            let random_budget_args = self.budget_args_of(self.random_budget);
            for proof in [true, false] {
                let bpffs = BpfFs::new()?;
                let mut extra = vec!["--rate", &rate, "--burst", &burst, "--levels", "auto"];
                extra.extend(random_budget_args.iter().map(String::as_str));
                if !proof {
                    extra.extend(["--proof-ttl", "0"]);
                }
                println!(
                    "  dns-xdp {} (client not allow-listed{})",
                    extra.join(" "),
                    if proof {
                        ", proven by a TCP query before each point"
                    } else {
                        ", no proof recorded"
                    }
                );
                let mut loader = Some(self.attach(&bpffs, false, &extra)?);
                let workload = if proof {
                    RANDOM_PROVEN
                } else {
                    RANDOM_UNPROVEN
                };
                for &offered in &self.random_rates {
                    points.push(self.point(
                        &mut loader,
                        workload,
                        Some(proof),
                        Some(Kind::Random),
                        offered,
                        Some(self.legit_rate),
                    )?);
                }
                detach(loader)?;
            }
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
    /// Only (a) and the random flood (d): skip the concentrated and spoofed floods.
    #[arg(long)]
    random_only: bool,
    /// The server budget of dns-xdp+levels+budget, queries/s (0: the legit maximum the
    /// calibration measures).
    #[arg(long, default_value_t = 0)]
    budget: u64,
    /// Its burst, queries (0: dns-xdp's default, a tenth of a second of the budget).
    #[arg(long, default_value_t = 0)]
    budget_burst: u64,
    /// The budget of dns-xdp+levels+budget in the random flood (d), queries/s (0: 2.5
    /// times the legit rate).
    #[arg(long, default_value_t = 0)]
    random_budget: u64,
}

/// Stops a configuration's dns-xdp, if it runs one: it must detach cleanly.
fn detach(loader: Option<Loader>) -> anyhow::Result<()> {
    match loader {
        Some(loader) => {
            loader
                .interrupt()
                .context("dns-xdp did not detach cleanly")?;
            Ok(())
        }
        None => Ok(()),
    }
}

fn main() -> anyhow::Result<()> {
    let Args {
        out_dir,
        seconds,
        legit_rate,
        only,
        random_only,
        budget,
        budget_burst,
        random_budget,
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
        budget: 0,
        budget_set: budget != 0,
        budget_burst,
        random_budget,
        random_rates: Vec::new(),
        random_only,
    };

    let ceiling = generator_ceiling(&bench, Kind::Spoofed)?;
    println!(
        "flood generator ceiling (spoofed, receiver drops in XDP): {:.0} frames/s offered, {:.0}/s received by the server's veth",
        ceiling.0, ceiling.1
    );
    let random_ceiling = generator_ceiling(&bench, Kind::Random)?;
    println!(
        "flood generator ceiling (random, receiver drops in XDP): {:.0} frames/s offered, {:.0}/s received by the server's veth",
        random_ceiling.0, random_ceiling.1
    );

    // Calibration: what the server sustains with no firewall (dnsperf as fast as it
    // goes); floods then run against half of it, and the budget is set to it.
    Firewall::None.apply(&bench.world)?;
    let calibration = bench.point(&mut None, "calibration, legit only", None, None, None, None)?;
    if bench.legit_rate == 0 {
        bench.legit_rate =
            ((calibration.legit.qps / 2.0 / 1000.0).round() as u64 * 1000).clamp(1000, 20_000);
    }
    let budget = match budget {
        0 => calibration.legit.qps.round() as u64,
        set => set,
    };
    bench.budget = budget;
    if bench.random_budget == 0 {
        bench.random_budget = bench.legit_rate * 5 / 2;
    }
    bench.random_rates = random_rates(bench.random_budget);
    println!(
        "legit rate under floods: {} queries/s; budget {} queries/s; random flood rates {:?}",
        bench.legit_rate, budget, bench.random_rates
    );
    let mut results: Vec<(Config, Vec<Point>)> = Vec::new();
    let selected: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|config| only.is_empty() || only.iter().any(|name| name == config.name()))
        .collect();
    anyhow::ensure!(!selected.is_empty(), "--only names no configuration");
    for &config in &selected {
        let points = bench
            .run_config(config)
            .with_context(|| format!("configuration {} did not run", config.name()))?;
        results.push((config, points));
    }
    let missing: Vec<_> = selected
        .iter()
        .filter(|config| {
            !results.iter().any(|(done, points)| {
                done == *config && points.len() == bench.expected_points(**config)
            })
        })
        .map(|config| config.name())
        .collect();
    if !missing.is_empty() {
        bail!("configurations that did not run completely: {missing:?}");
    }
    write_results(
        &out_dir,
        &bench,
        &results,
        [ceiling, random_ceiling],
        started,
    )?;
    Ok(())
}

/// The generator as fast as it goes into a receiver that drops everything in XDP:
/// (frames/s sent, frames/s the server's veth received).
fn generator_ceiling(bench: &Bench, kind: Kind) -> anyhow::Result<(f64, f64)> {
    Firewall::None.apply(&bench.world)?;
    let bpffs = BpfFs::new()?;
    let deny = match kind {
        Kind::Random => "0.0.0.0/0",
        _ => "198.19.0.0/16",
    };
    let loader = bench.attach(&bpffs, true, &["--deny", deny])?;
    let before = Snapshot::take(&bench.world)?;
    let flood = Flood::start(&bench.world.flood_spec(kind, None)?)?;
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
    ceilings: [(f64, f64); 2],
    started: Instant,
) -> anyhow::Result<()> {
    let [ceiling, random_ceiling] = ceilings;
    let mut md = String::new();
    writeln!(
        md,
        "End-to-end benchmark: {}; {} s per point; legit load (dnsperf, one client, allow-listed or exempt except in dns-xdp+levels+budget's (d)) at {} queries/s under floods; \
         the flood generator reached {:.2} Mpps offered ({:.2} Mpps received by the server's veth) into an XDP drop, {:.2} ({:.2}) with random sources; \
         dns-xdp+levels+budget used {} ({}); (d) with the client not allow-listed: --rate {}/s --burst {} --levels auto {}, \
         proven by a TCP query before each point, or --proof-ttl 0.\n",
        machine(),
        bench.seconds,
        bench.legit_rate,
        ceiling.0 / 1e6,
        ceiling.1 / 1e6,
        random_ceiling.0 / 1e6,
        random_ceiling.1 / 1e6,
        bench.budget_args().join(" "),
        if bench.budget_set {
            "set with --budget"
        } else {
            "the legit maximum of the calibration"
        },
        2 * bench.legit_rate,
        2 * bench.legit_rate,
        bench.budget_args_of(bench.random_budget).join(" "),
    )?;
    summary(&mut md, results, &bench.random_rates)?;
    writeln!(md, "\nEvery point:\n")?;
    writeln!(
        md,
        "| configuration | workload | flood offered pps | flood sent pps | veth ring drops/s | legit answered / sent | % of offered legit | p50 ms | p99 ms | XDP drops/s | netfilter drops/s | conntrack full drops/s | socket drops/s | softirq CPU s | conntrack entries | budget served proven/s | served unproven/s | shed/s | slipped/s |"
    )?;
    writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let mut json_results = Vec::new();
    for (config, points) in results {
        for point in points {
            let [ring, xdp, netfilter, conntrack, socket] = point.drops_per_second();
            let budget = if point.xdp_counters.is_null() {
                "- | - | - | -".to_owned()
            } else {
                let per_second = |name: &str| point.per_second(point.xdp(name));
                format!(
                    "{:.0} | {:.0} | {:.0} | {:.0}",
                    per_second("budget_served_proven"),
                    per_second("budget_served_unproven"),
                    per_second("budget_shed_light")
                        + per_second("budget_shed_heavy")
                        + per_second("budget_shed_proven"),
                    per_second("budget_slipped"),
                )
            };
            writeln!(
                md,
                "| {} | {} | {} | {:.0} | {ring:.0} | {}/{} | {:.1} | {:.2} | {:.2} | {xdp:.0} | {netfilter:.0} | {conntrack:.0} | {socket:.0} | {:.2} | {} | {budget} |",
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
        "budget": bench.budget,
        "budget_calibrated": !bench.budget_set,
        "budget_burst": (bench.budget_burst > 0).then_some(bench.budget_burst),
        "random_rates": bench.random_rates,
        "unlisted_rate": 2 * bench.legit_rate,
        "generator_ceiling_pps": {"sent": ceiling.0, "received": ceiling.1},
        "generator_ceiling_random_pps": {"sent": random_ceiling.0, "received": random_ceiling.1},
        "points": json_results,
    });
    fs::write(
        out_dir.join("e2e.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    fs::write(
        out_dir.join("e2e.svg"),
        chart(results, &bench.random_rates)?,
    )?;
    println!("\n{md}");
    println!("written to {}", out_dir.join("e2e.{md,json,svg}").display());
    Ok(())
}

/// A flood rate as a column name: 25k, 1M, max.
fn rate_name(offered: Option<u64>) -> String {
    match offered {
        None => "max".to_owned(),
        Some(rate) if rate >= 1_000_000 && rate % 100_000 == 0 => {
            format!("{}M", rate as f64 / 1e6)
        }
        Some(rate) => format!("{}k", rate / 1000),
    }
}

/// The flood panels and tables: kind, title, offered rates.
fn floods(random_rates: &[Option<u64>]) -> [(Kind, &'static str, Vec<Option<u64>>); 3] {
    [
        (
            Kind::Concentrated,
            "(b) legit + concentrated flood (4 sources)",
            FLOOD_RATES.to_vec(),
        ),
        (
            Kind::Spoofed,
            "(c) legit + spoofed flood (65 536 sources)",
            FLOOD_RATES.to_vec(),
        ),
        (
            Kind::Random,
            "(d) legit + random flood (sources from the whole IPv4 unicast space)",
            random_rates.to_vec(),
        ),
    ]
}

/// The rows of a flood's table or chart: (row name, its points of that flood), one per
/// configuration and, for (d) in `dns-xdp+levels+budget`, per proof.
fn rows(results: &[(Config, Vec<Point>)], kind: Kind) -> Vec<(Config, String, Vec<&Point>)> {
    let mut rows = Vec::new();
    for (config, points) in results {
        for proof in [None, Some(true), Some(false)] {
            let chosen: Vec<&Point> = points
                .iter()
                .filter(|point| point.flood == Some(kind) && point.proof == proof)
                .collect();
            if let Some(first) = chosen.first() {
                rows.push((*config, first.row(*config), chosen));
            }
        }
    }
    rows
}

/// The headline tables: legit answered (% of offered) and p99 latency by flood rate for
/// each flood, the random flood's proven and unproven runs side by side, and where the
/// flood was dropped at 200 000 pps.
fn summary(
    md: &mut String,
    results: &[(Config, Vec<Point>)],
    random_rates: &[Option<u64>],
) -> std::fmt::Result {
    for (kind, title, rates) in floods(random_rates) {
        let rows = rows(results, kind);
        if rows.is_empty() {
            continue;
        }
        writeln!(
            md,
            "{title}: legit answered, % of offered (p99 latency ms)\n"
        )?;
        let mut header = "| configuration | (a) no flood, max qps |".to_owned();
        let mut rule = "|---|---:|".to_owned();
        for &offered in &rates {
            header.push_str(&format!(" {} |", rate_name(offered)));
            rule.push_str("---:|");
        }
        writeln!(md, "{header}\n{rule}")?;
        for (config, name, points) in rows {
            let max_qps = results
                .iter()
                .find(|(done, _)| *done == config)
                .and_then(|(_, points)| points.iter().find(|point| point.flood.is_none()))
                .map_or(0.0, |point| point.legit.qps);
            let mut row = format!("| {name} | {max_qps:.0} |");
            for point in points {
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
    proof_table(md, results)?;
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
                point.row(*config),
                point.flood.map_or("-", Kind::name),
                point.softirq_seconds(),
                point.after.conntrack_entries,
            )?;
        }
    }
    Ok(())
}

/// (d) in `dns-xdp+levels+budget`, the client proven and unproven side by side: legit
/// answered, the flood actually sent, and what the budget did with both.
fn proof_table(md: &mut String, results: &[(Config, Vec<Point>)]) -> std::fmt::Result {
    let runs = |proof: bool| -> Vec<&Point> {
        results
            .iter()
            .flat_map(|(_, points)| points)
            .filter(|point| point.flood == Some(Kind::Random) && point.proof == Some(proof))
            .collect()
    };
    let (proven, unproven) = (runs(true), runs(false));
    if proven.is_empty() && unproven.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "(d) random flood, dns-xdp+levels+budget with the client not allow-listed: legit answered, % of offered (p99 ms), \
         proven (one TCP query before the point) and unproven (--proof-ttl 0), and the budget's decisions per second \
         (served while pressed: proven / unproven; shed; slipped, TC=1)\n"
    )?;
    writeln!(
        md,
        "| flood offered | flood sent pps, proven run | legit answered, proven | legit answered, unproven | flood sent pps, unproven run | proven run: served proven / unproven, shed, slipped | unproven run: served unproven, shed, slipped |\n\
         |---|---:|---:|---:|---:|---|---|"
    )?;
    for index in 0..proven.len().max(unproven.len()) {
        let (with, without) = (proven.get(index), unproven.get(index));
        let offered = with.or(without).map_or(Some(0), |point| point.offered);
        let answered = |point: Option<&&Point>| {
            point.map_or("-".to_owned(), |point| {
                format!("{:.1} ({:.0})", point.answered_pct(), point.legit.p99_ms)
            })
        };
        let sent = |point: Option<&&Point>| {
            point.map_or("-".to_owned(), |point| {
                format!("{:.0}", point.flood_sent_rate)
            })
        };
        let per_second = |point: &Point, names: &[&str]| -> f64 {
            names
                .iter()
                .map(|name| point.per_second(point.xdp(name)))
                .sum()
        };
        let shed = [
            "budget_shed_light",
            "budget_shed_heavy",
            "budget_shed_proven",
        ];
        let budget_with = with.map_or("-".to_owned(), |point| {
            format!(
                "{:.0} / {:.0}, {:.0}, {:.0}",
                per_second(point, &["budget_served_proven"]),
                per_second(point, &["budget_served_unproven"]),
                per_second(point, &shed),
                per_second(point, &["budget_slipped"]),
            )
        });
        let budget_without = without.map_or("-".to_owned(), |point| {
            format!(
                "{:.0}, {:.0}, {:.0}",
                per_second(point, &["budget_served_unproven"]),
                per_second(point, &shed),
                per_second(point, &["budget_slipped"]),
            )
        });
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {budget_with} | {budget_without} |",
            rate_name(offered),
            sent(with),
            answered(with),
            answered(without),
            sent(without),
        )?;
    }
    writeln!(md)
}

/// Legit answered (%) against offered flood rate, one line per configuration (and
/// proof, for (d)), one panel per flood kind, drawn with plotters into an SVG document.
fn chart(results: &[(Config, Vec<Point>)], random_rates: &[Option<u64>]) -> anyhow::Result<String> {
    use plotters::prelude::*;
    const COLORS: [RGBColor; 7] = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1500, 430)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Legit queries answered (%) vs offered flood rate",
            ("sans-serif", 15),
        )?;
        let panels = root.split_evenly((1, 3));
        for (area, (kind, title, rates)) in panels.iter().zip(floods(random_rates)) {
            let labels: Vec<String> = rates.iter().map(|&rate| rate_name(rate)).collect();
            let title = title.split(" (").next().unwrap_or(title);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 12))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(36)
                .build_cartesian_2d(0usize..labels.len().max(2) - 1, 0f64..100f64)?;
            chart
                .configure_mesh()
                .x_labels(labels.len())
                .x_label_formatter(&|index| labels.get(*index).cloned().unwrap_or_default())
                .x_desc("offered flood (packets/s)")
                .y_desc("legit answered (%)")
                .draw()?;
            for (line, (_, name, points)) in rows(results, kind).into_iter().enumerate() {
                let color = COLORS[line % COLORS.len()];
                let series: Vec<(usize, f64)> = points
                    .iter()
                    .enumerate()
                    .map(|(index, point)| (index, point.answered_pct()))
                    .collect();
                chart
                    .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                    .label(name)
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

    fn point(flood: Option<Kind>, proof: Option<bool>, completed: u64) -> Point {
        Point {
            workload: "test",
            proof,
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
            xdp_counters: json!({"budget_served_proven": 3, "proven_sources": 1}),
        }
    }

    /// Every configuration's points as `run_config` makes them (no (a)): (b) and (c) at
    /// the five flood rates, (d) at `random` rates, twice in `dns-xdp+levels+budget`.
    fn results(random: usize) -> Vec<(Config, Vec<Point>)> {
        Config::ALL
            .into_iter()
            .map(|config| {
                let mut points: Vec<Point> = [Kind::Concentrated, Kind::Spoofed]
                    .into_iter()
                    .flat_map(|kind| {
                        (0..5).map(move |step| point(Some(kind), None, 100 - step * 10))
                    })
                    .collect();
                let proofs: &[Option<bool>] = if config == Config::DnsXdpLevels {
                    &[Some(true), Some(false)]
                } else {
                    &[None]
                };
                for &proof in proofs {
                    points.extend(
                        (0..random)
                            .map(|step| point(Some(Kind::Random), proof, 100 - step as u64 * 10)),
                    );
                }
                (config, points)
            })
            .collect()
    }

    #[test]
    fn random_rates_reach_ten_times_the_budget() {
        let rates = random_rates(87_000);
        assert_eq!(
            rates,
            [25_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]
                .map(Some)
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(random_rates(123_456)[5], Some(1_300_000));
        assert_eq!(rate_name(Some(1_300_000)), "1.3M");
        assert_eq!(rate_name(Some(500_000)), "500k");
    }

    #[test]
    fn the_summary_has_a_row_per_configuration_and_proof() {
        let random = random_rates(87_000);
        let results = results(random.len());
        let mut md = String::new();
        summary(&mut md, &results, &random).unwrap();
        assert!(md.contains("(d) legit + random flood"), "{md}");
        assert!(
            md.contains("| dns-xdp+levels+budget (client proven) |"),
            "{md}"
        );
        assert!(
            md.contains("| dns-xdp+levels+budget (client unproven) |"),
            "{md}"
        );
        assert!(md.contains("| 1M |"), "{md}");
        // The side-by-side table: a row per random rate, both runs' answers.
        assert_eq!(md.matches("| 100.0 (0) | 100.0 (0) |").count(), 1, "{md}");
        assert!(md.contains("| 3 / 0, 0, 0 |"), "{md}");
    }

    #[test]
    fn the_chart_is_an_svg_with_a_line_and_a_label_per_configuration() {
        let random = random_rates(87_000);
        let results = results(random.len());
        let svg = chart(&results, &random).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for (config, _) in &results {
            assert!(
                svg.contains(config.name()),
                "no label for {}",
                config.name()
            );
        }
        assert!(svg.contains("(client unproven)"));
        // Two panels with a marked point per configuration and flood rate; the third with
        // one per random rate for each configuration, twice for dns-xdp+levels+budget.
        assert_eq!(
            svg.matches("<circle").count(),
            2 * results.len() * 5 + (results.len() + 1) * random.len()
        );
    }
}
