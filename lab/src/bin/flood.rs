//! The flood generator on its own: how many frames per second it reaches here.
//!
//! `flood [--kind spoofed|concentrated|random] [--rate PPS] [--seconds S] [--threads N]`: the
//! lab's two namespaces (veth with one queue per CPU, 198.18.0.0/24), GRO on the
//! receiving end and no DNS server there: frames go up the receiver's stack and are
//! dropped at UDP (no listener). Prints what was sent and what the receiver counted.
//! Needs root.

use std::{thread, time::Duration};

use dns_xdp_lab::lab::{Snapshot, World};
use dns_xdp_testkit::flood::{Flood, Kind};

/// Which flood.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Spoofed,
    Concentrated,
    /// Sources from the whole IPv4 unicast space.
    Random,
}

/// The flood generator alone, against the lab's server.
#[derive(clap::Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "spoofed")]
    kind: KindArg,
    /// Frames per second offered (default: as fast as it goes).
    #[arg(long)]
    rate: Option<u64>,
    /// How long to flood (0.1 to 600 s).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Sending threads (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(
        (0.1..=600.0).contains(&args.seconds),
        "--seconds must be between 0.1 and 600"
    );
    let kind = match args.kind {
        KindArg::Spoofed => Kind::Spoofed,
        KindArg::Concentrated => Kind::Concentrated,
        KindArg::Random => Kind::Random,
    };
    let (rate, seconds, threads) = (args.rate, args.seconds, args.threads);
    let world = World::new()?;
    world.server_gro(true)?;
    let mut spec = world.flood_spec(kind, rate)?;
    if threads > 0 {
        spec.threads = threads;
    }
    let before = Snapshot::take(&world)?;
    let flood = Flood::start(&spec)?;
    thread::sleep(Duration::from_secs_f64(seconds));
    let report = flood.stop()?;
    let after = Snapshot::take(&world)?;
    let received = after.rx_packets - before.rx_packets;
    let ring = after.veth_ring_drops - before.veth_ring_drops;
    println!(
        "{} flood, {} thread(s), offered {}: sent {} frames in {:.2} s = {:.0} frames/s; \
         the receiving veth counted {received} ({:.0}/s); {ring} lost in its full receive ring",
        kind.name(),
        spec.threads,
        rate.map_or("max".to_owned(), |rate| format!("{rate}/s")),
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        received as f64 / report.elapsed.as_secs_f64()
    );
    Ok(())
}
