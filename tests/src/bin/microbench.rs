//! BPF_PROG_TEST_RUN micro-benchmark: kernel-measured ns per packet of each verdict path
//! of the XDP program next to a bare `XDP_PASS` program, side by side in one run.
//! Run by `cargo xtask bench`; writes Markdown and JSON to the directory given (or
//! target/bench). Needs root.

use std::{fs, path::PathBuf, time::Duration};

use dns_xdp::programs::{XDP_PASS_PROGRAM, XDP_PROGRAM};
use dns_xdp_tests::{
    packet::{DSTOPTS, HOPOPTS, Layer, build, dns_query},
    testrun::Harness,
};

/// Runs per kernel call; the kernel reports the mean time of one run.
const REPEAT: u32 = 200_000;
/// Rounds, alternating programs, of which the median is reported.
const ROUNDS: usize = 9;

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_nanos() as f64
}

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
    let query = || Layer::Payload(dns_query(1, "example.com"));
    let paths = [
        (
            "non-DNS (IPv4 UDP to 5353)",
            build(&[Layer::Eth, Layer::ipv4(), Layer::udp(5353), query()]),
        ),
        (
            "DNS query, IPv4 UDP",
            build(&[Layer::Eth, Layer::ipv4(), Layer::udp(53), query()]),
        ),
        (
            "DNS query, IPv4 TCP",
            build(&[Layer::Eth, Layer::ipv4(), Layer::tcp(53), query()]),
        ),
        (
            "DNS query, IPv6 UDP after 2 extension headers",
            build(&[
                Layer::Eth,
                Layer::Ipv6,
                Layer::Ipv6Ext {
                    protocol: HOPOPTS,
                    len_units: 0,
                },
                Layer::Ipv6Ext {
                    protocol: DSTOPTS,
                    len_units: 0,
                },
                Layer::udp(53),
                query(),
            ]),
        ),
        (
            "malformed (truncated IPv4)",
            build(&[Layer::Eth, Layer::ipv4(), Layer::udp(53)])[..30].to_vec(),
        ),
    ];
    let mut harness = Harness::new(&[53])?;
    let mut rows = Vec::new();
    for (name, frame) in &paths {
        let (mut parser, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            parser.push(harness.run_program(XDP_PROGRAM, frame, REPEAT)?.1);
            baseline.push(harness.run_program(XDP_PASS_PROGRAM, frame, REPEAT)?.1);
        }
        let (parser, baseline) = (median(parser), median(baseline));
        rows.push((name.to_string(), frame.len(), parser, baseline));
    }

    let mut markdown = String::from(
        "| path | frame bytes | dns_xdp ns/pkt | xdp_pass ns/pkt | ratio | added ns |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for (name, len, parser, baseline) in &rows {
        markdown.push_str(&format!(
            "| {name} | {len} | {parser:.1} | {baseline:.1} | {:.2} | {:.1} |\n",
            parser / baseline,
            parser - baseline
        ));
        json.push(serde_json::json!({
            "path": name, "frame_bytes": len, "dns_xdp_ns": parser, "xdp_pass_ns": baseline,
            "ratio": parser / baseline,
        }));
    }
    println!("BPF_PROG_TEST_RUN, {REPEAT} runs per call, median of {ROUNDS} alternating rounds\n");
    print!("{markdown}");
    fs::create_dir_all(&out_dir)?;
    fs::write(out_dir.join("microbench.md"), &markdown)?;
    fs::write(
        out_dir.join("microbench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!(
        "\nwritten to {}",
        out_dir.join("microbench.{md,json}").display()
    );
    Ok(())
}
