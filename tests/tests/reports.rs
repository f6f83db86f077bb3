//! Reports stay bounded: a read of a source table of a million slots, while its slots
//! are being rewritten, ends within its time limit and lists every slot in use once.
//! Needs root.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use bytemuck::Zeroable as _;
use dns_xdp::{Programs, Settings, maps::WALK_LIMIT, settings::Levels};
use dns_xdp_common::{FAMILY_V4, SOURCE_WAYS, SourceKey, SourceLine};
use dns_xdp_testkit::loader::BpfFs;

const ENTRIES: u32 = 1 << 20;

/// The bucket of the IPv4 /32 `index` (level 0, UDP).
fn key(index: u32) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&index.to_be_bytes());
    SourceKey {
        addr,
        family: FAMILY_V4,
        prefix_len: 32,
        level: 0,
        tcp: 0,
    }
}

/// Line `line` with every slot in use, by the sources `line * SOURCE_WAYS + way`.
fn full_line(line: u32, passed: u64) -> SourceLine {
    let mut value = SourceLine::zeroed();
    for way in 0..SOURCE_WAYS {
        value.tags[way] = u64::from(line) << 8 | way as u64 | 1;
        value.keys[way] = key(line * SOURCE_WAYS as u32 + way as u32);
        value.counts[way].passed = passed;
    }
    value
}

#[test]
fn a_read_of_a_million_slots_being_rewritten_is_bounded_and_lists_each_once() {
    let bpffs = BpfFs::new().unwrap();
    let dir = bpffs.path().join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings {
        rate: Some("10/s".parse().unwrap()),
        levels: Levels::None,
        table_size: ENTRIES,
        ..Settings::default()
    };
    let programs = Programs::load(&settings, Some(&dir)).unwrap();
    assert_eq!(programs.maps().table_size().unwrap(), ENTRIES);
    let lines = ENTRIES / SOURCE_WAYS as u32;
    let pin = dir.join("SOURCES");
    let open = move || -> Array<MapData, SourceLine> {
        Array::try_from(aya::maps::Map::Array(MapData::from_pin(&pin).unwrap())).unwrap()
    };
    let mut table = open();
    let filled = Instant::now();
    for line in 0..lines {
        table.set(line, full_line(line, 1), 0).unwrap();
    }
    let filled = filled.elapsed();
    // Rewrites during the read: the same slots, their counters moving.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, open) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            let mut table = open();
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let line = (written % u64::from(lines)) as u32;
                table.set(line, full_line(line, written + 2), 0).unwrap();
                written += 1;
            }
            written
        })
    };
    let started = Instant::now();
    let states = programs.maps().source_states().unwrap();
    let read = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let distinct: HashSet<SourceKey> = states.iter().map(|(key, _)| *key).collect();
    println!(
        "{ENTRIES} slots in {lines} lines ({} MiB, filled in {filled:.1?}); read while \
         {written} lines were rewritten in {read:.2?}: {} listed, {} distinct",
        programs.maps().table_bytes() >> 20,
        states.len(),
        distinct.len()
    );
    assert_eq!(
        states.len(),
        ENTRIES as usize,
        "a slot missing or listed twice"
    );
    assert_eq!(distinct.len(), states.len(), "a slot listed twice");
    assert!(written > 0, "nothing was rewritten during the read");
    assert!(read < WALK_LIMIT + Duration::from_millis(500), "{read:?}");
}
