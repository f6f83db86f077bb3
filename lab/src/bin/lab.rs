//! `cargo xtask lab`: dns-xdp at work in a small world of network namespaces, with a live
//! view a newcomer can read. Needs root; touches no real interface.
//!
//! `lab [--duration S] [--legit-rate QPS] [--flood-rate PPS] [--rate R] [--burst N]`
//!
//! A server namespace runs NSD (an authoritative DNS server) with dns-xdp attached to its
//! interface; a client namespace runs dnsperf (well-behaved clients) and the flood
//! generator. The run has three phases: normal traffic, then a flood from four abusive
//! sources, then a flood from tens of thousands of spoofed sources. Everything is removed
//! on exit, Ctrl-C included.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::process::CommandExt as _,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dns_xdp_lab::lab::{
    World, catch_interrupts, dns_xdp_binary, interrupted, query_file, sleep_unless_interrupted,
    start_nsd,
};
use dns_xdp_testkit::{
    flood::{Flood, Kind},
    loader::{BpfFs, Loader},
    netns::{CLIENT_V4, LINK, SERVER_V4},
    process::Process,
};
use serde_json::Value;

/// The lab: dns-xdp against floods between two namespaces, with a live view.
#[derive(clap::Parser)]
struct Options {
    /// Seconds per phase (3 to 3600; a trailing `s` is allowed).
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    duration: f64,
    /// The legitimate clients' queries/s.
    #[arg(long, default_value_t = 2000)]
    legit_rate: u64,
    /// The flood's frames/s.
    #[arg(long, default_value_t = 100_000)]
    flood_rate: u64,
    /// dns-xdp's per-source rate.
    #[arg(long, default_value = "10/s")]
    rate: String,
    /// dns-xdp's per-source burst.
    #[arg(long, default_value = "20")]
    burst: String,
}

/// A phase's length in seconds: 3 to 3600, `30` or `30s`.
fn parse_duration(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if (3.0..=3600.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err("must be between 3 and 3600 seconds".into())
    }
}

fn main() -> anyhow::Result<()> {
    let options = <Options as clap::Parser>::parse();
    catch_interrupts();
    let result = run(&options);
    println!("\nlab: everything removed (namespaces, programs, processes).");
    result
}

fn say(text: &str) {
    println!("lab: {text}");
}

fn run(options: &Options) -> anyhow::Result<()> {
    say(&format!(
        "building a small world: two network namespaces, \"server\" ({SERVER_V4}) and \
         \"client\" ({CLIENT_V4}), joined by a virtual cable (veth). Nothing touches this \
         machine's real interfaces."
    ));
    let world = World::new()?;
    say("starting NSD, an authoritative DNS server, in the server namespace (zone lab.example)");
    let _nsd = start_nsd(&world)?;
    let bpffs = BpfFs::new()?;
    let binary = dns_xdp_binary()?;
    say(&format!(
        "attaching dns-xdp to the server's interface: each source may send {} queries \
         (bursts of {}); the client {CLIENT_V4} stands for known resolvers and is allow-listed",
        options.rate, options.burst
    ));
    let mut command = world
        .server
        .command(binary.to_str().context("non-UTF-8 path")?);
    command
        .args(["attach", "--iface", LINK, "--json", "--stats-interval", "1"])
        .args(["--metrics-addr", "off", "--top", "5"])
        .args(["--rate", &options.rate, "--burst", &options.burst])
        .args(["--allow", &format!("{CLIENT_V4}/32")])
        .arg(bpffs.arg())
        // Its own process group: Ctrl-C reaches this program only, which stops the
        // children in order.
        .process_group(0);
    let mut loader = Loader::spawn(command)?;
    let first = loader
        .next_json(Duration::from_secs(15))
        .context("dns-xdp did not start")?;
    if interrupted() {
        return Ok(());
    }
    // What the queries ask: `top --queries` over the sampled queries, every 2 s.
    let mut command = world
        .server
        .command(binary.to_str().context("non-UTF-8 path")?);
    command
        .args(["top", "--queries", "--watch=2", "--json", "--iface", LINK])
        .arg(bpffs.arg())
        .process_group(0);
    let mut asked_reader = Loader::spawn(command)?;
    let mut asked = Value::Null;

    let seconds = options.duration.ceil() as u64;
    say(&format!(
        "well-behaved clients: dnsperf sends {} queries/s for {seconds} s",
        options.legit_rate
    ));
    let queries = query_file(&world)?;
    let mut dnsperf = world.client.command("dnsperf");
    dnsperf
        .args([
            "-s",
            SERVER_V4,
            "-l",
            &seconds.to_string(),
            "-t",
            "1",
            "-S",
            "1",
        ])
        .args([
            "-c",
            "4",
            "-q",
            "500",
            "-Q",
            &options.legit_rate.to_string(),
        ])
        .args(["-O", "suppress=timeout,unexpected"])
        .arg("-d")
        .arg(&queries)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut dnsperf = Process::spawn("dnsperf", &mut dnsperf)?;
    let answered = per_second_lines(dnsperf.child.stdout.take().expect("piped"));

    let third = options.duration / 3.0;
    let phases = [
        (0.0, None, "normal traffic only".to_owned()),
        (
            third,
            Some(Kind::Concentrated),
            format!(
                "+ a flood from 4 abusive sources (198.18.1.1-4), {} queries/s in total",
                options.flood_rate
            ),
        ),
        (
            2.0 * third,
            Some(Kind::Spoofed),
            format!(
                "+ a flood from up to 65 536 spoofed sources (198.19.0.0/16), {} queries/s \
                 in total, each source below the per-source limit",
                options.flood_rate
            ),
        ),
    ];
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut flood: Option<Flood> = None;
    let mut phase = usize::MAX;
    let mut previous = first;
    let mut legit_answered = 0.0;
    let mut history: Vec<String> = Vec::new();
    while started.elapsed().as_secs_f64() < options.duration && !interrupted() {
        let elapsed = started.elapsed().as_secs_f64();
        let now_phase = phases
            .iter()
            .rposition(|(from, _, _)| elapsed >= *from)
            .unwrap_or(0);
        if now_phase != phase {
            phase = now_phase;
            if let Some(old) = flood.take() {
                old.stop()?;
            }
            if let Some(kind) = phases[phase].1 {
                flood = Some(Flood::start(
                    &world.flood_spec(kind, Some(options.flood_rate))?,
                )?);
            }
            history.push(format!(
                "{elapsed:5.1}s phase {}: {}",
                phase + 1,
                phases[phase].2
            ));
        }
        if !sleep_unless_interrupted(Duration::from_millis(250)) {
            break;
        }
        while let Ok(rate) = answered.try_recv() {
            legit_answered = rate;
        }
        let Ok(report) = loader.latest_json(Duration::from_millis(1500)) else {
            continue;
        };
        if report == previous {
            continue;
        }
        if let Ok(latest) = asked_reader.latest_json(Duration::from_millis(10)) {
            asked = latest;
        }
        let view = render(
            &report,
            &asked,
            &previous,
            options,
            &Moment {
                elapsed,
                phase: &phases[phase].2,
                legit_answered,
            },
            &flood,
        );
        previous = report;
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!("{}", history.join("\n"));
        println!("{view}");
        std::io::stdout().flush()?;
    }
    if let Some(flood) = flood.take() {
        let report = flood.stop()?;
        say(&format!(
            "the flood generator sent {} frames in its last phase ({:.0}/s)",
            report.sent,
            report.rate()
        ));
    }
    drop(dnsperf);
    drop(asked_reader);
    match loader.interrupt() {
        Ok((_, last)) => {
            let counters = &last["counters"];
            say(&format!(
                "dns-xdp detached. In total it saw {} packets and dropped {} queries in XDP \
                 (before the kernel allocated anything for them).",
                counters["packets"],
                dropped_total(counters)
            ));
        }
        Err(error) => say(&format!("dns-xdp did not stop cleanly: {error:#}")),
    }
    if interrupted() {
        say("interrupted: tearing down");
    }
    Ok(())
}

/// dnsperf's `-S 1` lines (`<timestamp>: <answers/s>`), as numbers.
fn per_second_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<f64> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Some((stamp, rate)) = line.split_once(": ") else {
                continue;
            };
            if stamp.parse::<f64>().is_ok()
                && let Ok(rate) = rate.trim().parse::<f64>()
                && sender.send(rate).is_err()
            {
                break;
            }
        }
    });
    receiver
}

/// Why dns-xdp drops a query, in words, by counter.
const DROP_REASONS: &[(&str, &str)] = &[
    (
        "rate_limited_level0",
        "one source over its limit (per-source bucket)",
    ),
    (
        "rate_limited_level1",
        "a /24 over its aggregate limit (many sources of one network)",
    ),
    (
        "rate_limited_level2",
        "a /16 over its aggregate limit (many sources of one provider block)",
    ),
    ("rate_limited_level3", "a wider prefix over its limit"),
    (
        "budget_shed_heavy",
        "server budget exceeded: heavy sources shed",
    ),
    (
        "budget_shed_light",
        "server budget exceeded: light sources shed",
    ),
    ("denied", "deny-listed"),
    (
        "not_query_response",
        "not a query: a response aimed at the server (reflection)",
    ),
    ("not_query_short", "not a query: shorter than a DNS header"),
    ("not_query_qdcount", "not a query: question count not 1"),
    ("not_query_opcode", "not a query: opcode not allowed"),
    ("rate_contended", "bucket contended"),
];

fn dropped_total(counters: &Value) -> u64 {
    ["rate_limited", "denied"]
        .iter()
        .chain(
            DROP_REASONS
                .iter()
                .filter(|(name, _)| name.starts_with("not_query") || name.starts_with("budget"))
                .map(|(name, _)| name),
        )
        .filter_map(|name| counters[*name].as_u64())
        .sum()
}

/// Where the lab's run stands when a view is drawn.
struct Moment<'a> {
    elapsed: f64,
    phase: &'a str,
    legit_answered: f64,
}

fn render(
    report: &Value,
    asked: &Value,
    previous: &Value,
    options: &Options,
    moment: &Moment,
    flood: &Option<Flood>,
) -> String {
    let Moment {
        elapsed,
        phase,
        legit_answered,
    } = *moment;
    let span = (report["elapsed_s"].as_f64().unwrap_or(0.0)
        - previous["elapsed_s"].as_f64().unwrap_or(0.0))
    .max(0.001);
    let rate = |section: &str, name: &str| {
        let now = report[section][name].as_u64().unwrap_or(0);
        let before = previous[section][name].as_u64().unwrap_or(0);
        now.saturating_sub(before) as f64 / span
    };
    let counters = &report["counters"];
    let mut reasons = BTreeMap::new();
    for (name, words) in DROP_REASONS {
        let per_second = rate("counters", name);
        if per_second > 0.0 {
            reasons.insert(*name, (per_second, *words));
        }
    }
    // (An empty f64 sum is -0.0, printed "-0".)
    let dropped: f64 = reasons.values().map(|(rate, _)| rate).sum::<f64>() + 0.0;
    let queries = rate("counters", "query_udp4") + rate("counters", "query_tcp4");
    let answers = rate("egress", "response_udp4_packets") + rate("egress", "response_tcp4_packets");
    let mut view = String::new();
    let mut line = |text: String| {
        view.push_str(&text);
        view.push('\n');
    };
    line(format!(
        "\n== dns-xdp lab == {elapsed:4.0} s of {:.0} s == now: {phase}",
        options.duration
    ));
    line(format!(
        "Well-behaved clients: {:>9} queries/s sent, {:>9.0} answered",
        options.legit_rate, legit_answered
    ));
    line(format!(
        "Flood:                {:>9} queries/s sent{}",
        if flood.is_some() {
            options.flood_rate
        } else {
            0
        },
        if flood.is_some() { "" } else { " (none yet)" }
    ));
    line(
        "At the server's interface (dns-xdp, XDP hook, before the kernel's network stack):"
            .to_owned(),
    );
    line(format!(
        "  DNS queries arriving {queries:>10.0}/s   dropped {dropped:>10.0}/s   passed to NSD {:>10.0}/s",
        (queries - dropped).max(0.0)
    ));
    line(format!("  answers NSD sent     {answers:>10.0}/s"));
    if reasons.is_empty() {
        line("  drops by reason: none".into());
    } else {
        line("  drops by reason:".into());
        for (per_second, words) in reasons.values() {
            line(format!("    {per_second:>10.0}/s  {words}"));
        }
    }
    let top = report["top"].as_array().cloned().unwrap_or_default();
    if !top.is_empty() {
        line("  top offenders (source prefixes refused most, since the start):".into());
        for source in top.iter().take(5) {
            line(format!(
                "    {:<20} refused {:>10}  passed {:>8}",
                source["prefix"].as_str().unwrap_or("?"),
                source["dropped"],
                source["passed"]
            ));
        }
    }
    let first =
        |group: &Value, table: &str| group[table][0]["key"].as_str().unwrap_or("-").to_owned();
    if let Some(refused) = asked["refused"].as_array().filter(|r| !r.is_empty()) {
        line(
            "  what the refused ask (sampled queries, last 2 s): prefix, top name, domain, type"
                .into(),
        );
        for group in refused.iter().take(3) {
            line(format!(
                "    {:<20} {:<34} {:<16} {}",
                group["prefix"].as_str().unwrap_or("?"),
                first(group, "names"),
                first(group, "domains"),
                first(group, "qtypes")
            ));
        }
    }
    if asked["admitted"]["samples"].as_u64().unwrap_or(0) > 0 {
        let admitted = &asked["admitted"];
        line(format!(
            "  what the admitted ask: top name {}, domain {}, type {}",
            first(admitted, "names"),
            first(admitted, "domains"),
            first(admitted, "qtypes")
        ));
    }
    line(format!(
        "  connection tracking: {} entries (max {}): dns-xdp keeps DNS out of the table",
        report["conntrack"]["count"], report["conntrack"]["max"]
    ));
    line(format!(
        "  totals since the start: {} packets seen, {} queries dropped, {} sources tracked",
        counters["packets"],
        dropped_total(counters),
        counters["sources_created"]
    ));
    view
}
