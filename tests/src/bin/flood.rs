//! The flood generator on its own: how many frames per second it reaches here.
//!
//! `flood [--kind spoofed|concentrated] [--rate PPS] [--seconds S] [--threads N]`: the
//! lab's two namespaces (veth with one queue per CPU, 198.18.0.0/24), GRO on the
//! receiving end and no DNS server there: frames go up the receiver's stack and are
//! dropped at UDP (no listener). Prints what was sent and what the receiver counted.
//! Needs root.

use std::{thread, time::Duration};

use anyhow::{Context as _, bail};
use dns_xdp_tests::{
    flood::{Flood, Kind},
    lab::{Snapshot, World},
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut kind, mut rate, mut seconds, mut threads) = (Kind::Spoofed, None, 5.0, 0);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kind" => {
                kind = match value()?.as_str() {
                    "spoofed" => Kind::Spoofed,
                    "concentrated" => Kind::Concentrated,
                    other => bail!("unknown kind {other}"),
                }
            }
            "--rate" => rate = Some(value()?.parse()?),
            "--seconds" => seconds = value()?.parse::<f64>()?.clamp(0.1, 600.0),
            "--threads" => threads = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
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
