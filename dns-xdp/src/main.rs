//! `dns-xdp`: attach the DNS fast path to an interface, and operate it from any shell.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use dns_xdp::{
    Attachment, conntrack,
    maps::Maps,
    metrics,
    options::{Options, parse_interval},
    patch::{ConfigPatch, RateOrOff},
    pins::{ConfigLock, SampleLock},
    programs::InterfaceEvent,
    programs::{DEFAULT_PIN_ROOT, detach_pinned, if_index, pin_dir},
    report::{Event, Report, rates},
    samples::{QueryTop, SampleReader},
    settings::{IpNet, Levels, Rate, parse_cidr},
    status::{self, Status},
};
use dns_xdp_common::{Counters, DNS_PORT};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

#[derive(Parser)]
#[command(version, about = "Stateless DNS fast path on XDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to an interface and run in the foreground until SIGINT/SIGTERM, then detach
    /// (or, with --keep-attached, leave everything attached for the next loader).
    Attach(AttachArgs),
    /// The daemon: `attach` with its options from a TOML file (command-line flags win),
    /// leaving the programs attached on exit so a restart or upgrade has no gap.
    Run(RunArgs),
    /// Programs attached to an interface, conntrack bypass rules and headroom, and filter
    /// rules that would drop untracked DNS.
    Status(StatusArgs),
    /// Counters of a running instance (with --watch, rates per second too).
    Stats(WatchArgs),
    /// Sources of a running instance whose queries were refused most (with --queries:
    /// the refused prefixes in the sampled queries, with the names and types they ask).
    Top(TopArgs),
    /// Sampled queries of a running instance as they arrive, one JSON object per line
    /// (for Filebeat, Vector, Promtail and other log shippers).
    Log(LogArgs),
    /// Change a running instance's limits; the next packets see the change.
    Set(SetArgs),
    /// The allow list of a running instance: never rate limited.
    Allow(ListArgs),
    /// The deny list of a running instance: always dropped.
    Deny(ListArgs),
    /// Remove everything dns-xdp has on an interface: programs, rules, pins.
    Detach(InstanceArgs),
    /// Write the manual pages (dns-xdp.1 and one per command) into a directory.
    Man(ManArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(clap::Args)]
struct ManArgs {
    /// Where to write the pages.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
}

#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
struct AttachArgs {
    #[command(flatten)]
    options: Options,
    /// Print reports as one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    attach: AttachArgs,
}

/// Which running instance a command talks to.
#[derive(clap::Args)]
struct InstanceArgs {
    /// The interface whose instance to reach (it need not exist any more).
    #[arg(long, short)]
    iface: String,
    /// Directory (on a bpffs) holding one pin directory per interface.
    #[arg(long, value_name = "DIR", env = "DNS_XDP_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
}

impl InstanceArgs {
    /// The maps of the instance, or an error saying there is none.
    fn maps(&self) -> anyhow::Result<Maps> {
        require_root()?;
        let dir = pin_dir(&self.pin_root, &self.iface);
        if !dir.exists() {
            bail!(
                "no dns-xdp instance on {}: nothing pinned in {}; start one with `dns-xdp attach` or `dns-xdp run`",
                self.iface,
                dir.display()
            );
        }
        Maps::from_pins(&dir)
    }

    /// The maps of the instance and the lock that makes this change the only one under
    /// way: held until the change is written.
    fn writer(&self) -> anyhow::Result<(Maps, ConfigLock)> {
        let maps = self.maps()?;
        let lock = ConfigLock::acquire(&pin_dir(&self.pin_root, &self.iface))?;
        Ok((maps, lock))
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// DNS ports to check the filter rules for (default: the instance's).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct WatchArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// Repeat every SECONDS (default 1) until interrupted, with rates per second.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true,
          default_missing_value = "1", value_parser = parse_interval)]
    watch: Option<Duration>,
    /// Sources to list.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 10)]
    top: usize,
    /// Print JSON (one object per line with --watch) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TopArgs {
    #[command(flatten)]
    watch: WatchArgs,
    /// Read the sampled queries for a window (--window, or the --watch period) and show
    /// the refused prefixes with their top names, domains and types.
    #[arg(long)]
    queries: bool,
    /// With --queries and without --watch: how long to read samples.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_interval)]
    window: Duration,
}

#[derive(clap::Args)]
struct LogArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// Stop after this many samples (default: until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    duration: Option<Duration>,
}

impl InstanceArgs {
    /// The reader of the instance's sampled queries, and the lock that makes it the only one.
    fn samples(&self) -> anyhow::Result<(SampleReader, SampleLock)> {
        self.maps()?;
        let dir = pin_dir(&self.pin_root, &self.iface);
        let lock = SampleLock::acquire(&dir, &self.iface)?;
        Ok((SampleReader::open_pinned(&dir)?, lock))
    }
}

/// How often a sample reader looks into the ring: well within the time the ring takes
/// to fill at the cap (it holds several seconds' worth at the default).
const SAMPLE_POLL: Duration = Duration::from_millis(100);

/// Prints the instance's samples as JSON lines until interrupted (or --count, --duration).
async fn log_samples(args: &LogArgs) -> anyhow::Result<()> {
    let (mut reader, _lock) = args.instance.samples()?;
    let started = Instant::now();
    let mut printed = 0u64;
    let mut ticker = interval(SAMPLE_POLL);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stdout = std::io::stdout().lock();
    loop {
        for sample in reader.read() {
            if args.count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
            // A closed pipe (the shipper or `head` went away) ends the log quietly.
            if writeln!(stdout, "{}", sample.json(&args.instance.iface)).is_err() {
                return Ok(());
            }
            printed += 1;
        }
        if stdout.flush().is_err()
            || args.count.is_some_and(|count| printed >= count)
            || args
                .duration
                .is_some_and(|duration| started.elapsed() >= duration)
        {
            return Ok(());
        }
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
    }
}

/// `top --queries`: samples read over a window, shown by refused prefix.
async fn top_queries(args: &TopArgs) -> anyhow::Result<()> {
    let instance = &args.watch.instance;
    let (mut reader, _lock) = instance.samples()?;
    let window = args.watch.watch.unwrap_or(args.window);
    // What waited in the ring before this reader came is older than the window.
    let started = std::time::SystemTime::now();
    let mut ticker = interval(SAMPLE_POLL);
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let mut top = QueryTop::default();
        let window_start = Instant::now();
        while window_start.elapsed() < window {
            for sample in reader.read() {
                if sample.time >= started {
                    top.add(&sample);
                }
            }
            tokio::select! {
                _ = sigint.recv() => return Ok(()),
                _ = ticker.tick() => {}
            }
        }
        for sample in reader.read() {
            if sample.time >= started {
                top.add(&sample);
            }
        }
        if args.watch.json {
            println!("{}", top.json(&instance.iface, window, args.watch.top));
        } else {
            println!("{}", top.text(&instance.iface, window, args.watch.top));
        }
        if args.watch.watch.is_none() {
            return Ok(());
        }
    }
}

#[derive(clap::Args)]
struct SetArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// Per-source query rate (N, N/s, N/min, N/hour), or `off`.
    #[arg(long, value_name = "RATE")]
    rate: Option<RateOrOff>,
    /// Burst of the per-source buckets (alone: keeps the live rate).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    burst: Option<u32>,
    /// Prefix length that makes an IPv4 source (0-32).
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=32))]
    v4_prefix: Option<u8>,
    /// Prefix length that makes an IPv6 source (0-128).
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    v6_prefix: Option<u8>,
    /// Count what would be dropped, drop nothing.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    dry_run: Option<bool>,
    /// Refuse UDP to a DNS port that cannot be a query.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    dns_sanity: Option<bool>,
    /// Admit only answers to this host's own queries; `false` drops every answer.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    backending: Option<bool>,
    /// Opcodes a query may carry (QUERY, NOTIFY, UPDATE, ... or numbers).
    #[arg(long, value_name = "LIST", value_parser = dns_xdp::settings::parse_opcodes)]
    opcodes: Option<u16>,
    /// Answer one in N rate-limited UDP queries with a truncated reply; 0: never.
    #[arg(long, value_name = "N")]
    slip: Option<u32>,
    /// Slipped replies per second, all destinations together.
    #[arg(long, value_name = "RATE")]
    slip_cap: Option<Rate>,
    /// Slipped replies per second to one destination /24 or /48.
    #[arg(long, value_name = "RATE")]
    slip_prefix_cap: Option<Rate>,
    /// Sample one in N queries of each decision; 0: off.
    #[arg(long, value_name = "N")]
    sample: Option<u32>,
    /// Samples per second, all decisions and CPUs together.
    #[arg(long, value_name = "RATE")]
    sample_cap: Option<Rate>,
    /// Replace the aggregate levels: `none` or `V4/V6:RATE:BURST,...`.
    #[arg(long, value_name = "LEVELS", value_parser = dns_xdp::settings::parse_levels)]
    levels: Option<Levels>,
    /// Server budget (N, N/s, N/min), or `off`.
    #[arg(long, value_name = "RATE")]
    budget: Option<RateOrOff>,
    /// Burst of the server budget [default: a tenth of a second of --budget].
    #[arg(long, value_name = "N", requires = "budget")]
    budget_burst: Option<u32>,
    /// Load the DNS cookie secrets from FILE again (rotate without detaching: the new
    /// secret first, the old one second), or `none` to stop checking cookies.
    #[arg(long, value_name = "FILE")]
    cookie_secrets: Option<PathBuf>,
    /// Seconds a source stays proven after its last proof; 0: record no proofs.
    #[arg(long, value_name = "SECONDS")]
    proof_ttl: Option<u64>,
    /// Slip UDP queries the budget sheds from unproven sources (within the slip caps).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    budget_slip: Option<bool>,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(subcommand)]
    action: ListAction,
}

#[derive(Subcommand)]
enum ListAction {
    /// Add a prefix (CIDR, or a single address).
    Add {
        /// An IPv4 or IPv6 prefix (`198.18.0.0/24`, `2001:db8::/32`) or address.
        #[arg(value_parser = parse_cidr)]
        prefix: IpNet,
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// Remove a prefix.
    Del {
        /// An IPv4 or IPv6 prefix (`198.18.0.0/24`, `2001:db8::/32`) or address.
        #[arg(value_parser = parse_cidr)]
        prefix: IpNet,
        #[command(flatten)]
        instance: InstanceArgs,
    },
    /// The prefixes and their hits.
    List {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dns-xdp: error: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Attach(args) => runtime.block_on(attach(args.options, None, args.json)),
        Command::Run(args) => match Options::from_file(&args.config) {
            Ok(file) => runtime.block_on(attach(
                args.attach.options.over(file),
                Some(&args.config),
                args.attach.json,
            )),
            Err(error) => Err(error),
        },
        Command::Status(args) => status(&args),
        Command::Stats(args) => runtime.block_on(watch(&args, false)),
        Command::Top(args) if args.queries => runtime.block_on(top_queries(&args)),
        Command::Top(args) => runtime.block_on(watch(&args.watch, true)),
        Command::Log(args) => runtime.block_on(log_samples(&args)),
        Command::Set(args) => set(&args),
        Command::Allow(args) => list(args.action, true),
        Command::Deny(args) => list(args.action, false),
        Command::Detach(args) => detach(&args),
        Command::Man(args) => manual(&args.dir),
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "dns-xdp",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: what failed, then why (the hint is in the outermost context).
            eprintln!("dns-xdp: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The manual pages, from the same definitions as `--help`: one for `dns-xdp`, one per
/// command (`dns-xdp-attach.1`...).
fn manual(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
    println!("manual pages written to {}", dir.display());
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("dns-xdp must run as root to reach BPF maps and netfilter; try `sudo dns-xdp ...`");
    }
    Ok(())
}

/// Attaches and runs until a signal; `config_file`: the daemon's (`run`) configuration.
async fn attach(
    options: Options,
    config_file: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    let daemon = config_file.is_some();
    let iface = options.iface()?.to_owned();
    let settings = options.settings()?;
    let pin_root = options.pin_root();
    let listener = match options.metrics_addr() {
        Some(addr) => Some((addr, metrics::bind(addr).await?)),
        None => None,
    };
    let mut attachment = Attachment::attach(&iface, options.mode(), &settings, &pin_root)?;
    dns_xdp::pins::record_config_file(&pin_dir(&pin_root, &iface), config_file)?;
    let limit = match settings.rate {
        Some(rate) => format!(
            "{rate} per /{} (IPv4) and /{} (IPv6) prefix, burst {}; aggregate levels [{}]",
            settings.v4_prefix,
            settings.v6_prefix,
            settings.burst,
            settings
                .aggregate_levels()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no rate limit".to_owned(),
    };
    log::info!(
        "{} {iface} ({:?} mode), DNS ports {:?}, {limit}, {} allow / {} deny prefixes{}; pins in {}",
        if attachment.adopted {
            "took over the programs on"
        } else {
            "attached to"
        },
        options.mode(),
        settings.ports,
        settings.allow.len(),
        settings.deny.len(),
        if settings.dry_run { ", dry run" } else { "" },
        pin_dir(&pin_root, &iface).display()
    );
    for advice in settings.advice() {
        log::warn!("{advice}");
    }
    if settings.conntrack_bypass {
        log::info!(
            "conntrack bypass: NOTRACK for DNS ports {:?} on {iface} (nft table inet {})",
            settings.ports,
            conntrack::table_name(&iface)
        );
        match conntrack::hazards(&settings.ports) {
            Ok(hazards) => {
                for hazard in &hazards {
                    log::warn!(
                        "{}",
                        status::hazard_warning(hazard, &settings.ports, &iface)
                    );
                }
            }
            Err(error) => log::warn!("could not check the filter rules: {error:#}"),
        }
    }
    let server = match listener {
        Some((addr, listener)) => match Maps::from_pins(&pin_dir(&pin_root, &iface)) {
            Ok(maps) => {
                log::info!("metrics on http://{addr}/metrics");
                Some(tokio::spawn(metrics::serve(
                    listener,
                    maps,
                    iface.clone(),
                    options.top(),
                )))
            }
            Err(error) => {
                log::error!("metrics unavailable: {error:#}");
                None
            }
        },
        None => None,
    };
    let result = run_until_signal(&mut attachment, &options, json).await;
    if let Some(server) = server {
        server.abort();
    }
    if options.keep_attached.unwrap_or(daemon) {
        attachment.leave();
        log::info!("left {iface} attached; `dns-xdp detach --iface {iface}` removes it");
        result
    } else {
        // Detach whatever happened while running; report the first error.
        let detached = attachment.detach();
        result.and(detached)?;
        log::info!("detached from {iface}");
        Ok(())
    }
}

async fn run_until_signal(
    attachment: &mut Attachment,
    options: &Options,
    json: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut logger = match attachment.programs().logger() {
        // SAFETY: the logger owns its ring buffer fd and lives inside the AsyncFd, which
        // deregisters it before dropping it.
        Ok(logger) => Some(
            unsafe { AsyncFd::register(logger) }
                .map_err(|error| error.into_parts().1)
                .context("polling the eBPF log")?,
        ),
        Err(error) => {
            log::warn!("kernel-side log unavailable: {error:#}");
            None
        }
    };
    let mut ticker = interval(options.stats_interval.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker.tick().await;
    // The interface is followed by name, twice a second.
    let mut link_check = interval(Duration::from_millis(500));
    link_check.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let print = |event: Event, attachment: &Attachment| -> anyhow::Result<()> {
        let report = Report::read(
            attachment.maps(),
            event,
            attachment.iface(),
            started.elapsed(),
            options.top(),
        )?;
        println!("{}", if json { report.json() } else { report.text() });
        Ok(())
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick(), if options.stats_interval.is_some() => print(Event::Stats, attachment)?,
            _ = link_check.tick() => match attachment.follow_interface() {
                Ok(Some(InterfaceEvent::Gone)) => log::warn!(
                    "{} is gone: the programs went with it; counters, buckets, lists and \
                     rules are kept, and the programs return when an interface of that name does",
                    attachment.iface()
                ),
                Ok(Some(InterfaceEvent::Renamed(name))) => log::warn!(
                    "{} was renamed to {name}: the programs stay on it, but its bypass rules \
                     match the old name; run dns-xdp on {name}, or rename it back",
                    attachment.iface()
                ),
                Ok(Some(InterfaceEvent::Returned(index))) => log::info!(
                    "{} is back (index {index}): programs attached again, with the state they had",
                    attachment.iface()
                ),
                Ok(None) => {}
                Err(error) => log::warn!(
                    "{} is back, but attaching to it failed (tried again shortly): {error:#}",
                    attachment.iface()
                ),
            },
            guard = async { logger.as_mut().expect("guarded").readable_mut().await },
                if logger.is_some() =>
            {
                let mut guard = guard.context("polling the eBPF log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    print(Event::Final, attachment)
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    require_root()?;
    let dir = pin_dir(&args.instance.pin_root, &args.instance.iface);
    let ports: Vec<u16> = if !args.ports.is_empty() {
        args.ports.clone()
    } else if dir.exists() {
        Maps::from_pins(&dir)?.config()?.dns_ports.iter().collect()
    } else {
        vec![DNS_PORT]
    };
    let status = Status::collect(&args.instance.iface, &ports, &args.instance.pin_root)?;
    if args.json {
        println!("{}", status.json());
    } else {
        print!("{}", status.text(&ports));
    }
    Ok(())
}

/// `stats` and `top`: once, or every `--watch` seconds with rates.
async fn watch(args: &WatchArgs, top_only: bool) -> anyhow::Result<()> {
    let maps = args.instance.maps()?;
    let started = Instant::now();
    let mut previous: Option<(Counters, Instant)> = None;
    let mut ticker = interval(args.watch.unwrap_or(Duration::from_secs(1)));
    ticker.tick().await;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let mut report = Report::read(
            &maps,
            Event::Stats,
            &args.instance.iface,
            started.elapsed(),
            args.top,
        )?;
        if top_only {
            report = report.top_only();
        }
        if let Some((counters, at)) = previous {
            report.rates = Some(rates(&report.counters, &counters, at.elapsed()));
        }
        println!(
            "{}",
            if args.json {
                report.json()
            } else {
                report.text()
            }
        );
        if args.watch.is_none() {
            return Ok(());
        }
        previous = Some((report.counters, Instant::now()));
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
    }
}

fn set(args: &SetArgs) -> anyhow::Result<()> {
    let patch = ConfigPatch {
        rate: args.rate,
        burst: args.burst,
        v4_prefix: args.v4_prefix,
        v6_prefix: args.v6_prefix,
        dry_run: args.dry_run,
        dns_sanity: args.dns_sanity,
        backending: args.backending,
        opcodes: args.opcodes,
        slip: args.slip,
        slip_cap: args.slip_cap,
        slip_prefix_cap: args.slip_prefix_cap,
        sample: args.sample,
        sample_cap: args.sample_cap,
        levels: args.levels.clone(),
        budget: args.budget,
        budget_burst: args.budget_burst,
        cookie_secrets: match &args.cookie_secrets {
            Some(path) if path.as_os_str() == "none" => Some(Vec::new()),
            Some(path) => Some(dns_xdp::cookies::read_secrets(path)?),
            None => None,
        },
        proof_ttl: args.proof_ttl,
        budget_slip: args.budget_slip,
    };
    let (mut maps, _writer) = args.instance.writer()?;
    let config = patch.apply(&maps.config()?)?;
    maps.set_config(&config)?;
    println!("{}: {}", args.instance.iface, status::config_json(&config));
    Ok(())
}

fn list(action: ListAction, allow: bool) -> anyhow::Result<()> {
    let name = if allow { "allow" } else { "deny" };
    match action {
        ListAction::Add { prefix, instance } => {
            let (mut maps, _writer) = instance.writer()?;
            if let Some(other) = maps
                .lists()?
                .iter()
                .find(|entry| entry.prefix == prefix && entry.allow != allow)
            {
                bail!(
                    "{prefix} is in the {} list; remove it there first",
                    if other.allow { "allow" } else { "deny" }
                );
            }
            maps.list_insert(prefix, allow)?;
            println!("{}: {prefix} added to the {name} list", instance.iface);
        }
        ListAction::Del { prefix, instance } => {
            let (mut maps, _writer) = instance.writer()?;
            let listed = maps
                .lists()?
                .iter()
                .any(|entry| entry.prefix == prefix && entry.allow == allow);
            if !listed {
                bail!("{prefix} is not in the {name} list of {}", instance.iface);
            }
            maps.list_remove(prefix)?;
            println!("{}: {prefix} removed from the {name} list", instance.iface);
        }
        ListAction::List { instance, json } => {
            let entries: Vec<_> = instance
                .maps()?
                .lists()?
                .into_iter()
                .filter(|entry| entry.allow == allow)
                .collect();
            if json {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|entry| serde_json::json!({"prefix": entry.prefix.to_string(), "hits": entry.hits}))
                    .collect();
                println!("{}", serde_json::Value::Array(entries));
            } else {
                for entry in entries {
                    println!("{:<43} {:>12} hits", entry.prefix.to_string(), entry.hits);
                }
            }
        }
    }
    Ok(())
}

fn detach(args: &InstanceArgs) -> anyhow::Result<()> {
    require_root()?;
    // An instance outlives its interface (deleted, renamed, in another namespace): its
    // pins and rules are removed all the same.
    let present = if_index(&args.iface).is_ok();
    let removed = detach_pinned(&args.pin_root, &args.iface)?;
    if removed.is_empty() {
        println!("{}: nothing of dns-xdp's was there", args.iface);
    } else {
        println!("{}: removed {}", args.iface, removed.join(", "));
    }
    if !present {
        println!(
            "{}: no interface of that name here, so nothing attached to check",
            args.iface
        );
        return Ok(());
    }
    // The kernel releases an unpinned link from a workqueue: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let ours = loop {
        let status = Status::collect(&args.iface, &[DNS_PORT], &args.pin_root)?;
        let ours: Vec<_> = status
            .xdp
            .into_iter()
            .chain(status.egress)
            .filter(|program| program.is_ours())
            .collect();
        if ours.is_empty() || Instant::now() > deadline {
            break ours;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !ours.is_empty() {
        bail!(
            "{} still has dns-xdp programs attached ({}); a loader without pins holds them: stop it",
            args.iface,
            ours.iter()
                .map(|program| format!("{} id {}", program.name, program.id))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every command and every flag says what it does, in `--help` and the manual.
    #[test]
    fn every_command_and_flag_has_a_help_line() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(path.clone());
                }
                check(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "dns-xdp", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
        Cli::command().debug_assert();
    }
}
