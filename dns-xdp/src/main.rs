//! `dns-xdp`: attach the DNS fast path to an interface and report its counters.

use std::{process::ExitCode, time::Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use dns_xdp::{
    Attachment, Mode, Settings, conntrack,
    report::{Event, Report},
    settings::{DEFAULT_BURST, DEFAULT_V4_PREFIX, DEFAULT_V6_PREFIX, IpNet, Rate, parse_cidr},
    status::{self, Status},
};
use dns_xdp_common::{DEFAULT_TABLE_SIZE, DNS_PORT};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Duration, MissedTickBehavior, interval},
};

#[derive(Parser)]
#[command(version, about = "Stateless DNS fast path on XDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to an interface and run in the foreground until SIGINT/SIGTERM, then detach.
    Attach(AttachArgs),
    /// Show what is attached to an interface, the conntrack bypass rules and headroom,
    /// and filter rules that would drop untracked DNS.
    Status(StatusArgs),
    /// Remove what dns-xdp left on an interface (the conntrack bypass rules of a loader
    /// that was killed); programs go with the process that attached them.
    Detach(DetachArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    #[arg(long, short)]
    iface: String,
    /// DNS ports to check the filter rules for.
    #[arg(long = "port", value_name = "PORT", default_values_t = [DNS_PORT],
          value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DetachArgs {
    #[arg(long, short)]
    iface: String,
}

#[derive(clap::Args)]
struct AttachArgs {
    /// Interface to attach to.
    #[arg(long, short)]
    iface: String,
    /// XDP attach mode: native in the driver, generic (skb), or let the kernel pick.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// A port that carries DNS (repeat for several). Queries go to it, answers come from it.
    #[arg(long = "port", value_name = "PORT", default_values_t = [DNS_PORT],
          value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Print the counters every SECONDS (the final counters are always printed on exit).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    stats_interval: Option<Duration>,
    /// Print counters as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Per-source query rate: N, N/s, N/min or N/hour (hashlimit's --hashlimit-above).
    /// Without it, queries are not rate limited.
    #[arg(long, value_name = "RATE")]
    rate: Option<Rate>,
    /// Queries a source may send at once before the rate applies (hashlimit's --hashlimit-burst).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BURST, requires = "rate")]
    burst: u32,
    /// IPv4 sources share a bucket per prefix of this length (hashlimit's --hashlimit-srcmask).
    #[arg(long, value_name = "BITS", default_value_t = DEFAULT_V4_PREFIX)]
    v4_prefix: u8,
    /// IPv6 sources share a bucket per prefix of this length.
    #[arg(long, value_name = "BITS", default_value_t = DEFAULT_V6_PREFIX)]
    v6_prefix: u8,
    /// Source prefixes tracked at once; when full, the least recently seen makes room.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_TABLE_SIZE)]
    table_size: u32,
    /// Never limit queries from this prefix (repeatable). The longest matching prefix of
    /// --allow and --deny decides.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<IpNet>,
    /// Always drop queries from this prefix (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    deny: Vec<IpNet>,
    /// Drop nothing: count what would be dropped, globally and per source.
    #[arg(long)]
    dry_run: bool,
    /// Sources shown in each report, by refused queries (0: none).
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Leave conntrack alone: install no NOTRACK rules for the DNS ports.
    #[arg(long)]
    no_conntrack_bypass: bool,
}

impl AttachArgs {
    fn settings(&self) -> Settings {
        Settings {
            ports: self.ports.clone(),
            rate: self.rate,
            burst: self.burst,
            v4_prefix: self.v4_prefix,
            v6_prefix: self.v6_prefix,
            table_size: self.table_size,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            dry_run: self.dry_run,
            conntrack_bypass: !self.no_conntrack_bypass,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Native,
    Skb,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Native => Mode::Native,
            ModeArg::Skb => Mode::Skb,
        }
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.01..=86_400.0).contains(&seconds) {
        return Err(format!(
            "{text:?}: the interval must be between 0.01 and 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
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
        Command::Attach(args) => runtime.block_on(attach(args)),
        Command::Status(args) => status(&args),
        Command::Detach(args) => detach(&args),
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

async fn attach(args: AttachArgs) -> anyhow::Result<()> {
    let settings = args.settings();
    let mut attachment = Attachment::attach(&args.iface, args.mode.into(), &settings)?;
    let limit = match settings.rate {
        Some(rate) => format!(
            "{rate} per /{} (IPv4) and /{} (IPv6) prefix, burst {}",
            settings.v4_prefix, settings.v6_prefix, settings.burst
        ),
        None => "no rate limit".to_owned(),
    };
    log::info!(
        "attached to {} ({:?} mode), DNS ports {:?}, {limit}, {} allow / {} deny prefixes{}",
        args.iface,
        Mode::from(args.mode),
        args.ports,
        settings.allow.len(),
        settings.deny.len(),
        if settings.dry_run { ", dry run" } else { "" }
    );
    if settings.conntrack_bypass {
        log::info!(
            "conntrack bypass: NOTRACK for DNS ports {:?} on {} (nft table inet {})",
            args.ports,
            args.iface,
            conntrack::table_name(&args.iface)
        );
        match conntrack::hazards(&args.ports) {
            Ok(hazards) => {
                for hazard in &hazards {
                    log::warn!(
                        "{}",
                        status::hazard_warning(hazard, &args.ports).trim_start()
                    );
                }
            }
            Err(error) => log::warn!("could not check the filter rules: {error:#}"),
        }
    }
    let result = run_until_signal(&mut attachment, &args).await;
    // Detach whatever happened while running; report the first error.
    let detached = attachment.detach();
    result.and(detached)?;
    log::info!("detached from {}", args.iface);
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "dns-xdp must run as root to read BPF and netfilter state; try `sudo dns-xdp ...`"
        );
    }
    Ok(())
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    require_root()?;
    let status = Status::collect(&args.iface, &args.ports)?;
    if args.json {
        println!("{}", status.json());
    } else {
        print!("{}", status.text(&args.ports));
    }
    Ok(())
}

fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    require_root()?;
    dns_xdp::programs::if_index(&args.iface)?;
    let had_rules = conntrack::installed(&args.iface)?.is_some();
    conntrack::remove(&args.iface)?;
    println!(
        "{}: {}",
        args.iface,
        if had_rules {
            "conntrack bypass rules removed"
        } else {
            "no conntrack bypass rules"
        }
    );
    let status = Status::collect(&args.iface, &[DNS_PORT])?;
    let ours: Vec<_> = status
        .xdp
        .iter()
        .chain(&status.egress)
        .filter(|program| program.is_ours())
        .collect();
    if ours.is_empty() {
        println!("{}: no dns-xdp program attached", args.iface);
    } else {
        anyhow::bail!(
            "{} still has dns-xdp programs attached ({}), held by a running dns-xdp attach; \
             stop that process (Ctrl-C or SIGTERM)",
            args.iface,
            ours.iter()
                .map(|program| format!("{} id {}", program.name, program.id))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

async fn run_until_signal(attachment: &mut Attachment, args: &AttachArgs) -> anyhow::Result<()> {
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
    let mut ticker = interval(args.stats_interval.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker.tick().await;
    let print = |event: Event, attachment: &mut Attachment| -> anyhow::Result<()> {
        let programs = attachment.programs();
        let report = Report {
            event,
            iface: &args.iface,
            elapsed_s: started.elapsed().as_secs_f64(),
            counters: programs.counters()?,
            egress: programs.egress_counters()?,
            conntrack: conntrack::headroom(),
            top: if args.top > 0 {
                programs.top_sources(args.top)?
            } else {
                Vec::new()
            },
            lists: programs.lists()?,
        };
        println!(
            "{}",
            if args.json {
                report.json()
            } else {
                report.text()
            }
        );
        Ok(())
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick(), if args.stats_interval.is_some() => print(Event::Stats, attachment)?,
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
