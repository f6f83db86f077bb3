//! The lab world shared by `lab` (the live demo) and `e2e` (the comparative benchmark):
//! a server namespace running NSD behind a veth, a client namespace running dnsperf and
//! the flood generator, firewall configurations, and the counters read around a run.
//!
//! Addresses (from 198.18.0.0/15, the benchmarking range): server 198.18.0.1, client
//! 198.18.0.2, concentrated flood 198.18.1.1–4, spoofed flood 198.19.0.0/16; the random
//! flood comes from the whole IPv4 unicast space. The server's default route is the
//! client, so answers to any flood leave the server as they would on a real network (and
//! are discarded by the client namespace, which forwards nothing).

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use dns_xdp_testkit::{
    flood::{Kind, Spec},
    netns::{CLIENT_V4, LINK, Netns, Pair, SERVER_V4},
    process::{Process, ScratchDir, output},
};

/// The zone NSD serves and the names asked for.
pub const ZONE: &str = "lab.example";
pub const QNAME: &str = "www.lab.example";
/// Base address of the concentrated flood's four sources (last octet 1 to 4).
pub const FEW_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// The spoofed flood's /16.
pub const SPOOFED_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// The dns-xdp binary: `DNS_XDP_BIN`, or the one next to this program (both are built
/// into target/release by `cargo xtask lab` and `cargo xtask bench`).
pub fn dns_xdp_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DNS_XDP_BIN") {
        return Ok(path.into());
    }
    let path = std::env::current_exe()?
        .parent()
        .context("no directory for this program")?
        .join("dns-xdp");
    if !path.exists() {
        bail!(
            "{} not found: build it (`cargo build --release -p dns-xdp`) or set DNS_XDP_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Signals that ask the program to stop (SIGINT, SIGTERM), seen by `interrupted`.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// From now on Ctrl-C and SIGTERM only set a flag (`interrupted`), so the caller leaves
/// its loops and every guard's `Drop` runs (processes stopped, namespaces deleted).
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sleeps up to `duration`, returning early (false) on an interrupt.
pub fn sleep_unless_interrupted(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if interrupted() {
            return false;
        }
        thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
    }
    !interrupted()
}

/// Two namespaces joined by a veth with one queue per CPU on each end (so the flood
/// generator's threads feed separate receive rings), and a scratch directory.
pub struct World {
    pub server: Netns,
    pub client: Netns,
    pub dir: ScratchDir,
}

impl World {
    pub fn new() -> anyhow::Result<Self> {
        // One receive ring per CPU for the flood generator's threads (a frame sent on CPU
        // n lands in ring n), and as many again for the client's ordinary traffic (XPS
        // below): with an XDP program attached, the veth carries sockets' packets through
        // the same rings, and a ring shared with a bursty flood, drained by NAPI on the
        // other CPU, overflows and loses legit and flood packets alike.
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let Pair { server, client } = Pair::with_queues(("lab-srv", "lab-cli"), 2 * cpus)?;
        server.ip(&["route", "add", "198.18.0.0/15", "via", CLIENT_V4])?;
        // Answers to the random flood's sources too. Without a route, NSD's sendmmsg
        // fails (ENETUNREACH) for the whole batch and NSD logs an error line per batch;
        // and with rp_filter on (inherited from the host), the stack would drop the
        // flood after XDP, before NSD. With it the flood is answered like the others.
        server.ip(&["route", "add", "default", "via", CLIENT_V4])?;
        for cpu in 0..cpus {
            let mask = format!("{:x}", 1u64 << cpu.min(63));
            let path = format!("/sys/class/net/{LINK}/queues/tx-{}/xps_cpus", cpus + cpu);
            output(
                client
                    .command("sh")
                    .args(["-c", &format!("echo {mask} > {path}")]),
            )
            .context("steering the client's traffic to its own veth queues (XPS)")?;
        }
        let dir = ScratchDir::new("lab")?;
        Ok(Self {
            server,
            client,
            dir,
        })
    }

    /// GRO on the server's end: the veth then runs NAPI, which frames sent by the flood
    /// generator need when no XDP program is attached there.
    pub fn server_gro(&self, on: bool) -> anyhow::Result<()> {
        output(self.server.command("ethtool").args([
            "-K",
            LINK,
            "gro",
            if on { "on" } else { "off" },
        ]))?;
        Ok(())
    }

    /// A flood from the client towards the server.
    pub fn flood_spec(&self, kind: Kind, rate: Option<u64>) -> anyhow::Result<Spec> {
        let src = match kind {
            Kind::Concentrated => FEW_BASE,
            Kind::Spoofed | Kind::Random => SPOOFED_BASE,
        };
        Ok(Spec {
            threads: thread::available_parallelism().map_or(1, |n| n.get()),
            ..Spec::across(&self.client, &self.server, kind, src, QNAME, rate)?
        })
    }

    /// A command run in the server namespace.
    pub fn in_server(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        output(self.server.command(program).args(args))
    }

    /// Whether the server answers `QNAME` (one query, 1 s timeout).
    pub fn answers(&self) -> bool {
        output(self.client.command("dig").args([
            "+short",
            "+tries=1",
            "+time=1",
            &format!("@{SERVER_V4}"),
            QNAME,
        ]))
        .is_ok_and(|out| out.trim() == "198.18.0.80")
    }
}

/// NSD (authoritative only) serving `ZONE` on 198.18.0.1:53 in the server namespace,
/// with one server process per CPU (`servers::start_nsd`).
pub fn start_nsd(world: &World) -> anyhow::Result<Process> {
    let zone = format!(
        "$ORIGIN {ZONE}.\n$TTL 3600\n\
         @ IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n\
         @ IN NS ns1\n\
         ns1 IN A {SERVER_V4}\n\
         www IN A 198.18.0.80\n\
         mail IN A 198.18.0.25\n\
         @ IN MX 10 mail\n\
         @ IN TXT \"dns-xdp lab zone\"\n"
    );
    dns_xdp_testkit::servers::start_nsd(
        &world.server,
        SERVER_V4,
        &[(ZONE, &zone)],
        &world.dir.path().join("nsd"),
        || world.answers(),
    )
}

/// The query file dnsperf cycles through (all names exist in the zone).
pub fn query_file(world: &World) -> anyhow::Result<PathBuf> {
    let path = world.dir.path().join("queries.txt");
    fs::write(
        &path,
        format!("{QNAME} A\n{ZONE} SOA\n{ZONE} MX\nmail.{ZONE} A\n{ZONE} TXT\nns1.{ZONE} A\n"),
    )?;
    Ok(path)
}

/// Result of one dnsperf run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Dnsperf {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    /// Latency percentiles (ms) of the answered queries: p50, p90, p99, max.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Starts dnsperf in the client namespace, for `seconds`, at `rate` queries/s with up to a
/// second of them in flight (`None`: as fast as answers come back, 200 in flight),
/// verbose (one line per answer, for latency percentiles) into a file.
pub fn start_dnsperf(
    world: &World,
    rate: Option<u64>,
    seconds: u64,
    tag: &str,
) -> anyhow::Result<(Process, PathBuf)> {
    let queries = query_file(world)?;
    let out = world.dir.path().join(format!("dnsperf-{tag}.txt"));
    let file = fs::File::create(&out)?;
    let mut command = world.client.command("dnsperf");
    command.args(["-s", SERVER_V4, "-l", &seconds.to_string(), "-t", "1", "-v"]);
    command.args(["-c", "4", "-O", "suppress=timeout,unexpected"]);
    match rate {
        // Open loop: room for a second of queries in flight, so slow or lost answers do
        // not hold the sending back (dnsperf sends only while under -q outstanding).
        Some(rate) => command.args([
            "-Q",
            &rate.to_string(),
            "-q",
            &rate.clamp(100, 20_000).to_string(),
        ]),
        // Closed loop: as fast as answers come back, 200 in flight.
        None => command.args(["-q", "200"]),
    };
    command.arg("-d").arg(&queries);
    command.stdout(file).stderr(Stdio::null());
    Ok((Process::spawn("dnsperf", &mut command)?, out))
}

/// Waits (bounded) for dnsperf to end and reads its output.
pub fn finish_dnsperf(mut process: Process, out: &Path, seconds: u64) -> anyhow::Result<Dnsperf> {
    let deadline = Instant::now() + Duration::from_secs(seconds + 15);
    while process.running() {
        if Instant::now() > deadline {
            bail!("dnsperf did not finish");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let text = fs::read_to_string(out)?;
    parse_dnsperf(&text).with_context(|| {
        let tail: Vec<_> = text.lines().rev().take(5).collect();
        format!("unexpected dnsperf output: {tail:?}")
    })
}

fn number_after(text: &str, label: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(label))?;
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses dnsperf's summary and its verbose per-answer lines (`> NOERROR name type
/// latency`).
pub fn parse_dnsperf(text: &str) -> Option<Dnsperf> {
    let mut latencies: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| line.split_whitespace().last()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[index - 1] * 1000.0
    };
    Some(Dnsperf {
        sent: number_after(text, "Queries sent:")? as u64,
        completed: number_after(text, "Queries completed:")? as u64,
        lost: number_after(text, "Queries lost:")? as u64,
        qps: number_after(text, "Queries per second:")?,
        p50_ms: percentile(0.5),
        p90_ms: percentile(0.9),
        p99_ms: percentile(0.99),
        max_ms: percentile(1.0),
    })
}

/// The firewall configurations compared (iptables in the server namespace only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// No rules.
    None,
    /// The usual stateful rules, conntrack tracking every query.
    Stateful,
    /// The stateful rules with DNS over TCP accepted whatever its state, as dns-xdp's
    /// conntrack bypass needs: its NOTRACK rules leave queries `untracked`, which no
    /// state rule matches (UDP is accepted statelessly already).
    StatefulUntracked,
    /// Raw-table NOTRACK for DNS both ways, stateless accepts.
    Notrack,
    /// Notrack plus a per-source hashlimit (rate/s, burst) dropping the excess.
    Hashlimit { rate: u32, burst: u32 },
}

impl Firewall {
    /// The `iptables-restore` input.
    pub fn rules(self) -> String {
        let client = format!("{CLIENT_V4}/32");
        let stateful = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -i lo -j ACCEPT\n\
             -A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT\n\
             -A INPUT -p icmp -j ACCEPT\n\
             -A INPUT -p udp --dport 53 -j ACCEPT\n\
             -A INPUT -p tcp --dport 53 -m state --state NEW -j ACCEPT\n\
             COMMIT\n"
            .to_owned();
        let raw = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A PREROUTING -p udp --dport 53 -j NOTRACK\n\
             -A PREROUTING -p tcp --dport 53 -j NOTRACK\n\
             -A OUTPUT -p udp --sport 53 -j NOTRACK\n\
             -A OUTPUT -p tcp --sport 53 -j NOTRACK\n\
             COMMIT\n";
        let stateless = |limit: &str| {
            format!(
                "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                 -A INPUT -i lo -j ACCEPT\n\
                 -A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT\n\
                 -A INPUT -p icmp -j ACCEPT\n\
                 {limit}\
                 -A INPUT -p udp --dport 53 -j ACCEPT\n\
                 -A INPUT -p tcp --dport 53 -j ACCEPT\n\
                 -A OUTPUT -p udp --sport 53 -j ACCEPT\n\
                 -A OUTPUT -p tcp --sport 53 -j ACCEPT\n\
                 COMMIT\n"
            )
        };
        match self {
            Firewall::None => String::new(),
            Firewall::Stateful => stateful,
            Firewall::StatefulUntracked => stateful.replace(
                "-A INPUT -p tcp --dport 53 -m state --state NEW -j ACCEPT\n",
                "-A INPUT -p tcp --dport 53 -j ACCEPT\n",
            ),
            Firewall::Notrack => format!("{raw}{}", stateless("")),
            Firewall::Hashlimit { rate, burst } => {
                let limit = |proto: &str| {
                    format!(
                        "-A INPUT -p {proto} --dport 53 -m hashlimit --hashlimit-name dns{proto} \
                         --hashlimit-mode srcip --hashlimit-srcmask 32 \
                         --hashlimit-above {rate}/sec --hashlimit-burst {burst} -j DROP\n"
                    )
                };
                // The measuring client is exempt, as a known resolver would be.
                let exempt = format!("-A INPUT -s {client} -p udp --dport 53 -j ACCEPT\n");
                format!(
                    "{raw}{}",
                    stateless(&format!("{exempt}{}{}", limit("udp"), limit("tcp")))
                )
            }
        }
    }

    /// Loads the rules into the server namespace (replacing what was there).
    pub fn apply(self, world: &World) -> anyhow::Result<()> {
        let path = world.dir.path().join("rules.v4");
        let flush = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
                     *raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        fs::write(&path, flush)?;
        output(world.server.command("iptables-restore").arg(&path))?;
        let rules = self.rules();
        if !rules.is_empty() {
            fs::write(&path, rules)?;
            output(world.server.command("iptables-restore").arg(&path))
                .context("iptables-restore in the server namespace")?;
        }
        Ok(())
    }
}

/// Counters read before and after a run (differences are what the run did).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    /// Softirq time of all CPUs (USER_HZ ticks, /proc/stat): the receive path of veth
    /// runs there, on whichever CPU sent the frame.
    pub softirq_ticks: u64,
    /// NET_RX softirqs raised (/proc/softirqs, all CPUs).
    pub net_rx: u64,
    /// UDP receive-buffer overflows in the server namespace (/proc/net/snmp).
    pub udp_rcvbuf_errors: u64,
    pub udp_in_datagrams: u64,
    /// Packets dropped by iptables rules with a DROP target, and by the INPUT policy.
    pub netfilter_dropped: u64,
    /// conntrack -S: packets dropped because the table was full, early drops, insert
    /// failures.
    pub conntrack_drop: u64,
    pub conntrack_early_drop: u64,
    pub conntrack_insert_failed: u64,
    /// Entries in the server namespace's table now.
    pub conntrack_entries: u64,
    /// Frames the server's veth received (all of them, before XDP).
    pub rx_packets: u64,
    /// Frames lost between the two ends of the veth, before the server saw them: the
    /// receive ring was full (`ethtool -S`: `*_xdp_xmit_errors`, `rx_queue_*_drops`, both
    /// ends). The flood generator sends in bursts; these are not the firewall's drops.
    pub veth_ring_drops: u64,
}

impl Snapshot {
    pub fn take(world: &World) -> anyhow::Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let softirq_ticks = stat
            .lines()
            .next()
            .and_then(|cpu| cpu.split_whitespace().nth(7))
            .and_then(|ticks| ticks.parse().ok())
            .unwrap_or(0);
        let softirqs = fs::read_to_string("/proc/softirqs")?;
        let net_rx = softirqs
            .lines()
            .find(|line| line.trim_start().starts_with("NET_RX:"))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        let snmp = world.in_server("cat", &["/proc/net/snmp"])?;
        let udp = snmp_row(&snmp, "Udp:");
        let iptables = world
            .in_server("iptables", &["-L", "-v", "-x", "-n"])
            .unwrap_or_default();
        let conntrack_stats = world.in_server("conntrack", &["-S"]).unwrap_or_default();
        let stat_sum = |key: &str| -> u64 {
            conntrack_stats
                .split_whitespace()
                .filter_map(|word| word.strip_prefix(&format!("{key}=")))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        };
        let conntrack_entries = world
            .in_server("conntrack", &["-C"])
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let mut veth_ring_drops = 0;
        for netns in [&world.server, &world.client] {
            let stats = output(netns.command("ethtool").args(["-S", LINK])).unwrap_or_default();
            for line in stats.lines() {
                let Some((key, value)) = line.trim().split_once(": ") else {
                    continue;
                };
                let ring = key.ends_with("xdp_xmit_errors")
                    || (key.starts_with("rx_queue_")
                        && key.ends_with("_drops")
                        && !key.ends_with("xdp_drops"));
                if ring {
                    veth_ring_drops += value.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        let link = world
            .server
            .ip(&["-s", "-j", "link", "show", "dev", LINK])?;
        let link: serde_json::Value = serde_json::from_slice(&link.stdout)?;
        Ok(Self {
            softirq_ticks,
            net_rx,
            udp_rcvbuf_errors: udp.get("RcvbufErrors").copied().unwrap_or(0),
            udp_in_datagrams: udp.get("InDatagrams").copied().unwrap_or(0),
            netfilter_dropped: iptables_dropped(&iptables),
            conntrack_drop: stat_sum("drop"),
            conntrack_early_drop: stat_sum("early_drop"),
            conntrack_insert_failed: stat_sum("insert_failed"),
            conntrack_entries,
            rx_packets: link[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0),
            veth_ring_drops,
        })
    }
}

/// Ticks per second of /proc/stat.
pub fn user_hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// One row of /proc/net/snmp as name → value.
fn snmp_row(snmp: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with(prefix)).collect();
    if rows.len() < 2 {
        return Default::default();
    }
    rows[0]
        .split_whitespace()
        .skip(1)
        .zip(rows[1].split_whitespace().skip(1))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// Packets dropped by `iptables -L -v -x -n`: DROP rules, and the INPUT chain's policy
/// (`Chain INPUT (policy DROP 123 packets, …)`).
fn iptables_dropped(listing: &str) -> u64 {
    let mut dropped = 0;
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Chain ") {
            if let Some(at) = words.iter().position(|w| *w == "DROP") {
                dropped += words
                    .get(at + 1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if words.get(2) == Some(&"DROP") {
            dropped += words[0].parse::<u64>().unwrap_or(0);
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dnsperf_output() {
        let text = "> NOERROR www.lab.example A 0.000100\n> NOERROR www.lab.example A 0.000300\n\
                    Statistics:\n\n  Queries sent:         10\n  Queries completed:    2 (20.00%)\n\
                    \x20 Queries lost:         8 (80.00%)\n\n  Queries per second:   2.000000\n";
        let result = parse_dnsperf(text).unwrap();
        assert_eq!((result.sent, result.completed, result.lost), (10, 2, 8));
        assert!((result.p50_ms - 0.1).abs() < 1e-9);
        assert!((result.max_ms - 0.3).abs() < 1e-9);
    }

    #[test]
    fn the_untracked_rules_accept_dns_over_tcp_statelessly() {
        let rules = Firewall::StatefulUntracked.rules();
        assert!(
            rules.contains("-A INPUT -p tcp --dport 53 -j ACCEPT\n"),
            "{rules}"
        );
        assert!(!rules.contains("--state NEW"), "{rules}");
        assert_eq!(
            rules.replace(
                "-p tcp --dport 53 -j",
                "-p tcp --dport 53 -m state --state NEW -j"
            ),
            Firewall::Stateful.rules()
        );
    }

    #[test]
    fn counts_iptables_drops() {
        let listing = "Chain INPUT (policy DROP 7 packets, 700 bytes)\n\
                       \x20   pkts      bytes target     prot opt in     out     source               destination\n\
                       \x20     12      960 DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:53 limit: above 10/sec\n\
                       \x20    100     8000 ACCEPT     17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:53\n";
        assert_eq!(iptables_dropped(listing), 19);
    }
}
