//! BPF_PROG_TEST_RUN micro-benchmark: kernel-measured ns per packet of each verdict path
//! of the XDP program next to a bare `XDP_PASS` program, side by side in one run.
//! Run by `cargo xtask bench`; writes Markdown and JSON to the directory given (or
//! target/bench). Needs root.

use std::{fs, path::PathBuf, time::Duration};

use dns_xdp::{
    Settings,
    programs::{VERIFIER_BUDGET, VERIFIER_LIMIT, XDP_PROGRAM},
    settings::{Levels, parse_cidr},
};
use dns_xdp_common::Counter;
use dns_xdp_testkit::{
    packet::{DSTOPTS, HOPOPTS, Layer, build, client_segment, dns_query, framed_queries, reversed},
    testrun::Harness,
};

/// The micro-benchmark: ns per packet of each verdict path next to a bare `XDP_PASS`.
#[derive(clap::Parser)]
struct Args {
    /// Where microbench.md and microbench.json are written.
    #[arg(default_value = "target/bench")]
    out_dir: PathBuf,
}

/// Runs per kernel call; the kernel reports the mean time of one run.
const REPEAT: u32 = 200_000;
/// Rounds, alternating programs, of which the median is reported.
const ROUNDS: usize = 9;

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_nanos() as f64
}

/// One measured path: a frame through a configured program.
struct Path {
    name: &'static str,
    harness: usize,
    frame: Vec<u8>,
}

fn settings(rate: Option<&str>, burst: u32, allow: &[&str], deny: &[&str]) -> Settings {
    let cidrs = |list: &[&str]| list.iter().map(|cidr| parse_cidr(cidr).unwrap()).collect();
    Settings {
        rate: rate.map(|rate| rate.parse().unwrap()),
        burst,
        allow: cidrs(allow),
        deny: cidrs(deny),
        levels: Levels::None,
        ..Settings::default()
    }
}

/// A TCP segment from an upstream server (port 53) to this host's port 40000.
fn upstream_segment() -> Vec<u8> {
    let mut frame = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::Tcp {
            src: 53,
            dst: 40000,
        },
    ]);
    frame[14 + 20 + 13] = 0x10; // ACK
    frame
}

/// The client's and the server's initial sequence numbers of the benchmark's connection.
const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 5_000;

/// Opens the benchmark's connection in `harness` (the server's SYN-ACK leaves), spends
/// the client's TCP data bucket with one query the server acknowledges, and returns the
/// client's next segment: three pipelined queries in order, walked and refused on every
/// run (a refused segment does not move the stream).
fn refused_pipelined_segment(harness: &mut Harness) -> anyhow::Result<Vec<u8>> {
    let client = CLIENT_ISN + 1;
    let server = SERVER_ISN + 1;
    harness.run_egress(&reversed(client_segment(0x12, SERVER_ISN, client, &[])))?;
    let first = framed_queries(1);
    harness.run(&client_segment(0x18, client, server, &first))?;
    let next = client + first.len() as u32;
    harness.run_egress(&reversed(client_segment(0x10, server, next, &[])))?;
    let segment = client_segment(0x18, next, server, &framed_queries(3));
    // The path measured is the one named: walked (three charged), refused.
    let outcome = harness.run(&segment)?;
    anyhow::ensure!(
        outcome.verdict == dns_xdp_testkit::testrun::XDP_DROP
            && outcome.delta.get(Counter::TcpMessagesCharged) == 3,
        "the pipelined segment took another path: {:?}",
        outcome.bumped()
    );
    Ok(segment)
}

/// Swaps the IPv4 addresses and the ports of a frame without IP options.
fn swap_ends(frame: &mut [u8]) {
    for index in 0..4 {
        frame.swap(14 + 12 + index, 14 + 16 + index);
    }
    for index in 0..2 {
        frame.swap(14 + 20 + index, 14 + 22 + index);
    }
}

/// The DNS cookie secret of the cookie paths.
const COOKIE_SECRET: [u8; 16] = *b"0123456789abcdef";

/// A query from 198.18.0.2 with a client cookie and, made with `secret`, a server
/// cookie of now (an RFC 9018 one, as BIND makes them); without a secret, the client
/// cookie alone.
fn cookie_query(secret: Option<[u8; 16]>) -> Vec<u8> {
    let client = *b"\x01\x02\x03\x04\x05\x06\x07\x08";
    let mut cookie = client.to_vec();
    if let Some(secret) = secret {
        let now = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |since| since.as_secs() as u32);
        let mut header = [dns_xdp_common::COOKIE_VERSION, 0, 0, 0, 0, 0, 0, 0];
        header[4..].copy_from_slice(&now.to_be_bytes());
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let hash = dns_xdp_common::cookie_hash(
            &dns_xdp_common::secret_key(&secret),
            u64::from_le_bytes(client),
            u64::from_le_bytes(header),
            dns_xdp_common::address_words(&addr),
            false,
        );
        cookie.extend(header);
        cookie.extend(hash.to_le_bytes());
    }
    let mut message = dns_query(1, "example.com");
    message[10..12].copy_from_slice(&1u16.to_be_bytes()); // ARCOUNT
    message.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0]); // root, OPT, 4096, TTL 0
    message.extend((4 + cookie.len() as u16).to_be_bytes());
    message.extend(10u16.to_be_bytes());
    message.extend((cookie.len() as u16).to_be_bytes());
    message.extend(cookie);
    let mut frame = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(message),
    ]);
    frame[26..30].copy_from_slice(&[198, 18, 0, 2]);
    frame
}

/// A bucket that always admits and a server budget of one query an hour, spent after its
/// first; shed queries are dropped; proofs last `proof_ttl` seconds (0: none).
fn spent_budget_settings(proof_ttl: u64) -> Settings {
    Settings {
        budget: Some("1/hour".parse().unwrap()),
        budget_burst: Some(1),
        budget_slip: false,
        proof_ttl,
        ..settings(Some("1000000000/s"), u32::MAX, &[], &[])
    }
}

fn main() -> anyhow::Result<()> {
    let Args { out_dir } = <Args as clap::Parser>::parse();
    let query = || Layer::Payload(dns_query(1, "example.com"));
    let udp4 = |src: [u8; 4]| {
        let mut frame = build(&[Layer::Eth, Layer::ipv4(), Layer::udp(53), query()]);
        frame[26..30].copy_from_slice(&src);
        frame
    };
    let admitting_budget = Settings {
        budget: Some("1000000000/s".parse().unwrap()),
        budget_burst: Some(u32::MAX),
        ..settings(Some("1000000000/s"), u32::MAX, &[], &[])
    };
    // 0: parse and count only; 1: a bucket that always admits (1 ns interval, huge
    // burst); 2: a bucket that always refuses (after its first packet); 3: lists;
    // 4: three levels.
    let mut harnesses = [
        Harness::with(&settings(None, 5, &[], &[]))?,
        Harness::with(&settings(Some("1000000000/s"), u32::MAX, &[], &[]))?,
        Harness::with(&settings(Some("1/hour"), 1, &[], &[]))?,
        Harness::with(&settings(
            Some("1/hour"),
            1,
            &["198.18.1.0/24"],
            &["198.18.9.0/24"],
        ))?,
        // 4: three levels that always admit (the automatic /24 and /16 above the /32).
        Harness::with(&Settings {
            levels: Levels::Auto,
            ..settings(Some("10000000/s"), u32::MAX / 32, &[], &[])
        })?,
        // 5: one level and a server budget, both always admitting.
        Harness::with(&admitting_budget)?,
        // 6: a bucket that always refuses, DNS cookies checked.
        Harness::with(&Settings {
            cookie_secrets: vec![COOKIE_SECRET],
            ..settings(Some("1/hour"), 1, &[], &[])
        })?,
        // 7: a bucket that always admits and a spent server budget: the query's source
        // looked up in PROVEN (unproven), shed and dropped (no slip: a slipped reply
        // would be the next run's frame).
        Harness::with(&spent_budget_settings(dns_xdp_common::DEFAULT_PROOF_TTL_S))?,
        // 8: the same with proofs off: no lookup.
        Harness::with(&spent_budget_settings(0))?,
    ];
    let paths = [
        Path {
            name: "non-DNS (IPv4 UDP to 5353)",
            harness: 0,
            frame: build(&[Layer::Eth, Layer::ipv4(), Layer::udp(5353), query()]),
        },
        Path {
            name: "DNS query, parse and count only",
            harness: 0,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "TCP connection attempt (SYN), parse only",
            harness: 0,
            frame: build(&[Layer::Eth, Layer::ipv4(), Layer::tcp(53)]),
        },
        Path {
            name: "TCP segment acknowledging nothing the server sent (drop)",
            harness: 2,
            frame: client_segment(0x10, CLIENT_ISN + 1, SERVER_ISN + 1000, &[]),
        },
        Path {
            name: "TCP segment, 3 pipelined queries walked, bucket refuses",
            harness: 2,
            frame: refused_pipelined_segment(&mut harnesses[2])?,
        },
        Path {
            name: "DNS query, IPv6 UDP after 2 extension headers, parse only",
            harness: 0,
            frame: build(&[
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
        },
        Path {
            name: "malformed (truncated IPv4)",
            harness: 0,
            frame: build(&[Layer::Eth, Layer::ipv4(), Layer::udp(53)])[..30].to_vec(),
        },
        Path {
            name: "DNS query, bucket admits (pass)",
            harness: 1,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, buckets admit at 3 levels (/32, /24, /16)",
            harness: 4,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, bucket and server budget admit",
            harness: 5,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, bucket refuses (rate-limited drop)",
            harness: 2,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, no server cookie, bucket refuses (cookies checked)",
            harness: 6,
            frame: cookie_query(None),
        },
        Path {
            name: "DNS query, valid server cookie: levels skipped (pass)",
            harness: 6,
            frame: cookie_query(Some(COOKIE_SECRET)),
        },
        Path {
            name: "DNS query, spent server budget, unproven: proof looked up, shed (drop)",
            harness: 7,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, spent server budget, proofs off: shed (drop)",
            harness: 8,
            frame: udp4([198, 18, 0, 2]),
        },
        Path {
            name: "DNS query, allow-listed",
            harness: 3,
            frame: udp4([198, 18, 1, 7]),
        },
        Path {
            name: "DNS query, deny-listed (drop)",
            harness: 3,
            frame: udp4([198, 18, 9, 7]),
        },
        Path {
            name: "answer, unsolicited (UDP from port 53, drop)",
            harness: 0,
            frame: build(&[
                Layer::Eth,
                Layer::ipv4(),
                Layer::Udp {
                    src: 53,
                    dst: 40000,
                },
                query(),
            ]),
        },
        Path {
            name: "answer admitted (TCP segment of an upstream connection)",
            harness: 0,
            frame: upstream_segment(),
        },
    ];
    // The upstream connection the admitted segments belong to, as egress records it.
    let mut outgoing = upstream_segment();
    swap_ends(&mut outgoing);
    harnesses[0].run_egress(&outgoing)?;
    let mut rows = Vec::new();
    for path in &paths {
        let (mut program, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            program.push(
                harnesses[path.harness]
                    .run_program(XDP_PROGRAM, &path.frame, REPEAT)?
                    .1,
            );
            baseline.push(harnesses[0].run_baseline(&path.frame, REPEAT)?.1);
        }
        let (program, baseline) = (median(program), median(baseline));
        rows.push((path.name.to_string(), path.frame.len(), program, baseline));
    }

    // Sampling (harness 2, a refusing bucket, samples one in 100 queries within 1000/s:
    // the default, as every path above): off, due on every query but over the cap (what
    // a flood costs at the cap), and every query sampled into the ring (fewer runs per
    // call, the ring drained between calls: it holds about 3 400 samples).
    let refused = udp4([198, 18, 0, 2]);
    let sampled = |every, cap: &str| Settings {
        sample: every,
        sample_cap: cap.parse().unwrap(),
        ..settings(Some("1/hour"), 1, &[], &[])
    };
    let mut off = Harness::with(&sampled(0, "1000/s"))?;
    let mut capped = Harness::with(&sampled(1, "1000/s"))?;
    let mut every = Harness::with(&sampled(1, "1000000000/s"))?;
    let mut reader = every.programs().take_samples()?;
    const SAMPLED_REPEAT: u32 = 2_000;
    for (name, harness, repeat) in [
        (
            "DNS query, bucket refuses, sampling off (--sample 0)",
            &mut off,
            REPEAT,
        ),
        (
            "DNS query, bucket refuses, due for a sample on every query, over the cap",
            &mut capped,
            REPEAT,
        ),
        (
            "DNS query, bucket refuses, every query sampled into the ring",
            &mut every,
            SAMPLED_REPEAT,
        ),
    ] {
        let (mut program, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            program.push(harness.run_program(XDP_PROGRAM, &refused, repeat)?.1);
            let _ = reader.read();
            baseline.push(harnesses[0].run_baseline(&refused, repeat)?.1);
        }
        rows.push((
            name.to_string(),
            refused.len(),
            median(program),
            median(baseline),
        ));
    }
    let lost = every
        .programs()
        .maps()
        .counters()?
        .get(Counter::SamplesLost);
    anyhow::ensure!(
        lost == 0,
        "{lost} samples lost: the sampled path was not measured"
    );

    // New sources: each run a source never seen before, one run per call (a new frame
    // each time), the bare program measured the same way. Into a table with free slots,
    // and into a full one where each newcomer takes a slot over (the steady state of a
    // flood of new sources), at one level and at three.
    const NEW_SOURCES: u32 = 20_000;
    let churned = |levels, table_size| Settings {
        levels,
        table_size,
        ..settings(Some("10/s"), 20, &[], &[])
    };
    for (name, settings, prefill) in [
        (
            "DNS query, a source never seen, a free slot",
            churned(Levels::None, 1 << 20),
            0,
        ),
        (
            "DNS query, a source never seen, takes a slot of a full table",
            churned(Levels::None, 1024),
            8_192,
        ),
        (
            "DNS query, a source never seen, 3 levels, takes slots of a full table",
            churned(Levels::Auto, 1024),
            8_192,
        ),
    ] {
        let mut harness = Harness::with(&settings)?;
        let mut source = 0x0a00_0000u32;
        let mut next = || {
            source += 1;
            udp4(source.to_be_bytes())
        };
        for _ in 0..prefill {
            harness.run_program(XDP_PROGRAM, &next(), 1)?;
        }
        let (mut program, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..NEW_SOURCES {
            let frame = next();
            program.push(harness.run_program(XDP_PROGRAM, &frame, 1)?.1);
            baseline.push(harnesses[0].run_baseline(&frame, 1)?.1);
        }
        rows.push((
            name.to_string(),
            refused.len(),
            median(program),
            median(baseline),
        ));
    }

    // Many CPUs: the same path from one CPU, then from every CPU at once, each CPU its
    // own source unless the path is about one shared bucket. What the CPUs share: the
    // server budget's `tat` (written by every admitted query, only read once it is
    // spent) and, for one source, its slot. Compare-and-swap attempts that lose to
    // another CPU `MAX_CAS_ATTEMPTS` times refuse: counted, they are false refusals.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spent_budget = Settings {
        budget: Some("1/hour".parse().unwrap()),
        budget_burst: Some(1),
        ..settings(Some("1000000000/s"), u32::MAX, &[], &[])
    };
    let mut spent = Harness::with(&spent_budget)?;
    // The budget as it was before CPUs drew credit: every query charged to the shared
    // `tat` (a chunk of 0).
    let mut exact_budget = Harness::with(&admitting_budget)?;
    let mut config = exact_budget.programs().maps().config()?;
    config.budget_chunk = 0;
    exact_budget.programs().maps_mut().set_config(&config)?;
    let mut contention = Vec::new();
    for (name, harness, shared_source) in [
        ("bucket admits, no budget", Some(1), false),
        ("bucket admits, one source from every CPU", Some(1), true),
        (
            "bucket and server budget admit, every query written to the shared tat",
            Some(6),
            false,
        ),
        (
            "bucket and server budget admit, from each CPU's credit",
            Some(5),
            false,
        ),
        ("server budget spent (shed)", None, false),
    ] {
        let harness = match harness {
            Some(6) => &mut exact_budget,
            Some(index) => &mut harnesses[index],
            None => &mut spent,
        };
        let frame = |cpu: usize| udp4([198, 18, 1, if shared_source { 2 } else { cpu as u8 + 2 }]);
        let before = harness.programs().maps().counters()?;
        let (mut one, mut all) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            one.push(harness.run_concurrently(&[frame(0)], REPEAT)?[0]);
            let frames: Vec<Vec<u8>> = (0..cpus).map(frame).collect();
            let times = harness.run_concurrently(&frames, REPEAT)?;
            all.push(times.iter().sum::<Duration>() / times.len() as u32);
        }
        let after = harness.programs().maps().counters()?;
        let moved = |counter| after.get(counter) - before.get(counter);
        let false_refusals = if name.starts_with("server budget spent") {
            0
        } else {
            moved(Counter::RateContended)
                + moved(Counter::BudgetShedHeavy)
                + moved(Counter::BudgetShedLight)
        };
        let runs = u64::from(REPEAT) * ROUNDS as u64 * (1 + cpus as u64);
        contention.push((name, median(one), median(all), false_refusals, runs));
    }

    let mut markdown = String::from(
        "| path | frame bytes | dns_xdp ns/pkt | xdp_pass ns/pkt | ratio | added ns |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for (name, len, program, baseline) in &rows {
        markdown.push_str(&format!(
            "| {name} | {len} | {program:.1} | {baseline:.1} | {:.2} | {:.1} |\n",
            program / baseline,
            program - baseline
        ));
        json.push(serde_json::json!({
            "path": name, "frame_bytes": len, "dns_xdp_ns": program, "xdp_pass_ns": baseline,
            "ratio": program / baseline,
        }));
    }
    markdown.push_str(&format!(
        "\nMany CPUs: ns per packet on one CPU alone, then on each of {cpus} CPUs at once \
         (the mean of the CPUs), and the refusals lost to contention:\n\n\
         | path | 1 CPU ns/pkt | {cpus} CPUs ns/pkt | ratio | false refusals | runs |\n\
         |---|---:|---:|---:|---:|---:|\n"
    ));
    for (name, one, all, false_refusals, runs) in &contention {
        markdown.push_str(&format!(
            "| {name} | {one:.1} | {all:.1} | {:.2} | {false_refusals} | {runs} |\n",
            all / one
        ));
        json.push(serde_json::json!({
            "contended_path": name, "one_cpu_ns": one, "all_cpus_ns": all, "cpus": cpus,
            "false_refusals": false_refusals, "runs": runs,
        }));
    }
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    markdown.push_str(&format!(
        "\nVerified instructions on Linux {} (limit {VERIFIER_LIMIT}, the tests' budget {VERIFIER_BUDGET}):\n\n",
        kernel.trim()
    ));
    for (program, count) in harnesses[0].programs().verified_instructions()? {
        markdown.push_str(&format!("- `{program}`: {count}\n"));
        json.push(serde_json::json!({ "program": program, "verified_instructions": count }));
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
