//! The verifier's budget: every program (of the production object, and of the test kit's)
//! loads on this kernel, and each one
//! costs the verifier at most `VERIFIER_BUDGET` instructions (half its limit). A change
//! that makes a program harder to verify fails here, on the machine that makes it, and
//! not on a user's. Needs root.
//!
//! The configuration is map data, which the verifier does not see: one load stands for
//! every configuration the loader can write. Two very different ones are loaded anyway,
//! and must cost the same.

use aya::{Ebpf, programs::Xdp};
use dns_xdp::{
    Settings,
    programs::{PROGRAMS, VERIFIER_BUDGET, VERIFIER_LIMIT, ebpf_object},
    settings::{Levels, parse_cidr},
};
use dns_xdp_testkit::{
    test_programs::{self, FLOOD_PROGRAMS, XDP_PASS_PROGRAM},
    testrun::Harness,
};

/// Everything on: a rate with automatic levels, a budget, slip, lists, dry-run, a
/// big table.
fn everything_on() -> Settings {
    Settings {
        rate: Some("10/s".parse().unwrap()),
        burst: 20,
        levels: Levels::Auto,
        budget: Some("50000/s".parse().unwrap()),
        slip: 2,
        allow: vec![parse_cidr("198.18.0.0/24").unwrap()],
        deny: vec![parse_cidr("2001:2::/48").unwrap()],
        dry_run: true,
        table_size: 1 << 20,
        ports: vec![53, 853],
        ..Settings::default()
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |release| release.trim().to_owned())
}

/// Fails naming every program over the budget.
fn check(counts: &[(String, u32)]) {
    let over: Vec<String> = counts
        .iter()
        .filter(|(_, count)| *count > VERIFIER_BUDGET)
        .map(|(name, count)| {
            format!(
                "{name}: {count} verified instructions, over the budget of {VERIFIER_BUDGET} \
                 ({:.0} % of the verifier's limit)",
                f64::from(*count) * 100.0 / f64::from(VERIFIER_LIMIT)
            )
        })
        .collect();
    assert!(
        over.is_empty(),
        "on Linux {}:\n{}\ntoolchain: {}",
        kernel_release(),
        over.join("\n"),
        std::env::var("DNS_XDP_TOOLCHAIN").unwrap_or_else(|_| "not reported".into())
    );
}

#[test]
fn every_program_verifies_within_half_the_limit() {
    println!("kernel: Linux {}", kernel_release());
    if let Ok(toolchain) = std::env::var("DNS_XDP_TOOLCHAIN") {
        println!("toolchain: {toolchain}");
    }
    let mut counts = Vec::new();
    let mut by_settings = Vec::new();
    for (what, settings) in [
        ("defaults", Settings::default()),
        ("everything on", everything_on()),
    ] {
        let mut harness = Harness::with(&settings).unwrap();
        let verified = harness.programs().verified_instructions().unwrap();
        assert_eq!(
            verified.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            PROGRAMS
        );
        by_settings.push((what, verified));
    }
    // The same object costs the same whatever the configuration.
    assert_eq!(by_settings[0].1, by_settings[1].1, "{by_settings:?}");
    counts.extend(
        by_settings[0]
            .1
            .iter()
            .map(|(name, count)| ((*name).to_owned(), *count)),
    );

    // Every program of the production object is accounted for, and none of the test
    // kit's is in it (a production start verifies only what it runs).
    let production = Ebpf::load(ebpf_object().unwrap()).unwrap();
    let mut in_object: Vec<&str> = production.programs().map(|(name, _)| name).collect();
    in_object.sort_unstable();
    let mut expected = PROGRAMS.to_vec();
    expected.sort_unstable();
    assert_eq!(in_object, expected);
    // The test kit's programs are verified too (the lab and the benchmarks load them).
    for name in FLOOD_PROGRAMS.into_iter().chain([XDP_PASS_PROGRAM]) {
        let mut ebpf = test_programs::load(name).unwrap();
        let program: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        let count = program
            .info()
            .unwrap()
            .verified_instruction_count()
            .unwrap();
        counts.push((name.to_owned(), count));
    }

    for (name, count) in &counts {
        println!(
            "verified instructions: {name:<16} {count:>8}  ({:.1} % of the limit, budget {VERIFIER_BUDGET})",
            f64::from(*count) * 100.0 / f64::from(VERIFIER_LIMIT)
        );
    }
    check(&counts);
}

#[test]
#[should_panic(expected = "dns_xdp: 500001 verified instructions, over the budget")]
fn a_program_over_the_budget_fails_naming_it() {
    check(&[
        ("dns_xdp_egress".into(), 1),
        ("dns_xdp".into(), VERIFIER_BUDGET + 1),
    ]);
}

/// The production object's maps are exactly the map list the loader pins and checks
/// from (`dns_xdp_common::maps::MAPS`), with the same key and value sizes.
#[test]
fn the_objects_maps_are_the_map_list() {
    use aya::maps::{Map, MapData};
    fn data(map: &Map) -> &MapData {
        match map {
            Map::Array(data)
            | Map::PerCpuArray(data)
            | Map::LruHashMap(data)
            | Map::HashMap(data)
            | Map::LpmTrie(data)
            | Map::RingBuf(data) => data,
            other => panic!("a map of an unexpected type: {other:?}"),
        }
    }
    let ebpf = Ebpf::load(ebpf_object().unwrap()).unwrap();
    // Data sections (`.rodata`: the log's format strings) are the compiler's, not maps
    // the programs declare.
    let mut in_object: Vec<(String, usize, usize)> = ebpf
        .maps()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, map)| {
            let info = data(map).info().unwrap();
            let sizes = (info.key_size() as usize, info.value_size() as usize);
            (name.to_owned(), sizes.0, sizes.1)
        })
        .collect();
    in_object.sort();
    let mut listed: Vec<(String, usize, usize)> = dns_xdp_common::maps::MAPS
        .iter()
        .map(|map| (map.name.to_owned(), map.key_size, map.value_size))
        .collect();
    listed.sort();
    assert_eq!(in_object, listed);
}
