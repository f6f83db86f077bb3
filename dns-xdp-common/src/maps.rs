//! Every map of the production object, in one list: its name, its key and value sizes,
//! and whether it outlives a loader (pinned). The kernel side declares its maps with
//! these sizes (`UNTRACKED_WORDS`, `SLIP_SCRATCH_LEN` and the key types), the loader pins
//! and checks pinned maps from this list, and a test checks the object against it.

use core::mem::size_of;

use crate::samples::{DECISIONS, SampledTypes};
use crate::{
    AwaitedKey, AwaitedState, Config, Counters, EgressCounters, FragmentKey, ListEntry, ProvenLine,
    SourceHash, SourceLine,
};

/// One map of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Pinned in the instance directory: its state outlives a loader (a takeover keeps
    /// counters, buckets and the answers awaited). The others start afresh with each load.
    pub pinned: bool,
}

const fn spec(name: &'static str, key_size: usize, value_size: usize, pinned: bool) -> MapSpec {
    MapSpec {
        name,
        key_size,
        value_size,
        pinned,
    }
}

/// The size of an `UNTRACKED` slot, in 8-byte words: the largest value handed through it.
pub const UNTRACKED_WORDS: usize = 6;
/// The slip reply's checksum scratch: a 36-byte pseudo-header, the UDP header, the
/// longest reply (12-byte header, 256-byte name, type and class) and 4 bytes of padding.
pub const SLIP_SCRATCH_LEN: usize = 36 + 8 + (12 + 256 + 4) + 4;

/// A cookie check's scratch: the source address and family (24 bytes), the cookie, DNS
/// header, OPT record and option header it reads (51).
pub const COOKIE_SCRATCH_LEN: usize = 80;

/// An array index.
const INDEX: usize = size_of::<u32>();
/// An LPM trie key: prefix length, then the address.
const LPM_V4: usize = INDEX + 4;
const LPM_V6: usize = INDEX + 16;
/// A time (ns): GCRA states, expiries.
const TIME: usize = size_of::<u64>();

pub const CONFIG: MapSpec = spec("CONFIG", INDEX, size_of::<Config>(), true);
pub const CONFIG_SLOT: MapSpec = spec("CONFIG_SLOT", INDEX, INDEX, true);
pub const COUNTERS: MapSpec = spec("COUNTERS", INDEX, size_of::<Counters>(), true);
pub const EGRESS_COUNTERS: MapSpec =
    spec("EGRESS_COUNTERS", INDEX, size_of::<EgressCounters>(), true);
pub const SOURCES: MapSpec = spec("SOURCES", INDEX, size_of::<SourceLine>(), true);
/// Pinned with `SOURCES`: without its secret, the table's slots could not be found again.
pub const SOURCE_HASH: MapSpec = spec("SOURCE_HASH", INDEX, size_of::<SourceHash>(), true);
/// Pinned: a proof outlives a restart as it outlives the client's next query.
pub const PROVEN: MapSpec = spec("PROVEN", INDEX, size_of::<ProvenLine>(), true);
pub const LIST_V4: MapSpec = spec("LIST_V4", LPM_V4, size_of::<ListEntry>(), true);
pub const LIST_V6: MapSpec = spec("LIST_V6", LPM_V6, size_of::<ListEntry>(), true);
pub const AWAITED: MapSpec = spec(
    "AWAITED",
    size_of::<AwaitedKey>(),
    size_of::<AwaitedState>(),
    true,
);
pub const FRAGMENTS: MapSpec = spec("FRAGMENTS", size_of::<FragmentKey>(), TIME, true);
pub const BUDGET: MapSpec = spec("BUDGET", INDEX, TIME, false);
pub const BUDGET_CREDIT: MapSpec = spec(
    "BUDGET_CREDIT",
    INDEX,
    size_of::<crate::limits::BudgetCredit>(),
    false,
);
pub const SLIP_CAP: MapSpec = spec("SLIP_CAP", INDEX, TIME, false);
pub const SLIP_PREFIX_CAPS: MapSpec = spec("SLIP_PREFIX_CAPS", INDEX, TIME, false);
pub const UNTRACKED: MapSpec = spec("UNTRACKED", INDEX, UNTRACKED_WORDS * 8, false);
pub const SCRATCH: MapSpec = spec("SCRATCH", INDEX, SLIP_SCRATCH_LEN, false);
pub const COOKIE_SCRATCH: MapSpec = spec("COOKIE_SCRATCH", INDEX, COOKIE_SCRATCH_LEN, false);
/// The sampled queries' ring buffer (no key or value). Pinned so that readers in other
/// processes (`dns-xdp log`) find it; it holds nothing worth keeping across loads.
pub const SAMPLES: MapSpec = spec("SAMPLES", 0, 0, true);
pub const SAMPLE_TICKS: MapSpec = spec("SAMPLE_TICKS", INDEX, DECISIONS * 8, false);
pub const SAMPLE_CAP: MapSpec = spec("SAMPLE_CAP", INDEX, TIME, false);
pub const SAMPLED_TYPES: MapSpec = spec("SAMPLED_TYPES", INDEX, size_of::<SampledTypes>(), true);
/// aya-log's ring buffer (no key or value).
pub const AYA_LOGS: MapSpec = spec("AYA_LOGS", 0, 0, false);

/// Every map of the production object.
pub const MAPS: [MapSpec; 23] = [
    CONFIG,
    CONFIG_SLOT,
    COUNTERS,
    EGRESS_COUNTERS,
    SOURCES,
    SOURCE_HASH,
    PROVEN,
    LIST_V4,
    LIST_V6,
    AWAITED,
    FRAGMENTS,
    BUDGET,
    BUDGET_CREDIT,
    SLIP_CAP,
    SLIP_PREFIX_CAPS,
    UNTRACKED,
    SCRATCH,
    COOKIE_SCRATCH,
    SAMPLES,
    SAMPLE_TICKS,
    SAMPLE_CAP,
    SAMPLED_TYPES,
    AYA_LOGS,
];

/// The maps a loader pins.
pub fn pinned() -> impl Iterator<Item = MapSpec> {
    MAPS.into_iter().filter(|map| map.pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_the_persistent_state_is_pinned() {
        for (index, map) in MAPS.iter().enumerate() {
            assert!(MAPS[index + 1..].iter().all(|other| other.name != map.name));
        }
        let pinned: [&str; 13] = core::array::from_fn(|index| pinned().nth(index).unwrap().name);
        assert_eq!(
            pinned,
            [
                "CONFIG",
                "CONFIG_SLOT",
                "COUNTERS",
                "EGRESS_COUNTERS",
                "SOURCES",
                "SOURCE_HASH",
                "PROVEN",
                "LIST_V4",
                "LIST_V6",
                "AWAITED",
                "FRAGMENTS",
                "SAMPLES",
                "SAMPLED_TYPES"
            ]
        );
    }
}
