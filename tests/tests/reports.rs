//! Reports stay bounded: a walk of a source table of a million buckets, under churn,
//! ends within its time limit and lists no bucket twice. Needs root.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use dns_xdp::{Programs, Settings, maps::WALK_LIMIT, settings::Levels};
use dns_xdp_common::{FAMILY_V4, SourceKey, SourceState};
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

#[test]
fn a_walk_of_a_million_buckets_under_churn_is_bounded_and_lists_each_once() {
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
    let pin = dir.join("SOURCES");
    let open = move || -> HashMap<MapData, SourceKey, SourceState> {
        HashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(&pin).unwrap())).unwrap()
    };
    let mut table = open();
    let filled = Instant::now();
    for index in 0..ENTRIES {
        table.insert(key(index), SourceState::default(), 0).unwrap();
    }
    let filled = filled.elapsed();
    // Churn: new buckets keep evicting the least recently used ones during the walk.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, open) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            let mut table = open();
            let mut inserted = 0u32;
            while !stop.load(Ordering::Relaxed) {
                table
                    .insert(key(ENTRIES + inserted), SourceState::default(), 0)
                    .unwrap();
                inserted += 1;
            }
            inserted
        })
    };
    let started = Instant::now();
    let states = programs.maps().source_states().unwrap();
    let walked = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let churned = churn.join().unwrap();
    let distinct: HashSet<SourceKey> = states.iter().map(|(key, _)| *key).collect();
    println!(
        "{ENTRIES} buckets (filled in {filled:.1?}); walked under churn ({churned} new buckets \
         meanwhile) in {walked:.2?}: {} listed, {} distinct",
        states.len(),
        distinct.len()
    );
    assert_eq!(distinct.len(), states.len(), "a bucket listed twice");
    assert!(!states.is_empty());
    assert!(
        walked < WALK_LIMIT + Duration::from_millis(500),
        "{walked:?}"
    );
}
