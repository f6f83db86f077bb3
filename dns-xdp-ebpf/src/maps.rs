//! Every map of the kernel programs, one purpose line each (katran's `balancer_maps.h`),
//! and the two accessors every packet uses: the live configuration and `untracked`.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use dns_xdp_common::maps::{COOKIE_SCRATCH_LEN, SLIP_SCRATCH_LEN, UNTRACKED_WORDS};
use dns_xdp_common::samples::{DECISIONS, SAMPLE_RING_BYTES, SampledTypes};
use dns_xdp_common::{
    AWAITED_TABLE_SIZE, AwaitedKey, AwaitedState, BudgetCredit, Config, Counters,
    DEFAULT_TABLE_SIZE, EgressCounters, FRAGMENT_TABLE_SIZE, FragmentKey, ListEntry,
    MAX_LIST_ENTRIES, PROVEN_LINES, ProvenLine, SLIP_PREFIX_SLOTS, SOURCE_WAYS, SourceHash,
    SourceLine,
};

/// Runtime configuration (DNS ports, limit, prefixes, flags), double-buffered: the loader
/// writes the slot not in use, then flips CONFIG_SLOT; read once per packet.
#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(2, 0);

/// Which CONFIG slot is live (0 or 1); flipped by the loader after writing the other.
#[map]
pub(crate) static CONFIG_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Packet counters by class and decision, one `Counters` per CPU; written here, summed by the loader.
#[map]
pub(crate) static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// DNS leaving the interface by direction, packets and bytes, one copy per CPU; written by
/// the egress program, summed by the loader.
#[map]
pub(crate) static EGRESS_COUNTERS: PerCpuArray<EgressCounters> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-source-prefix GCRA buckets and query counters, in lines of `SOURCE_WAYS` slots
/// (`dns_xdp_common::table`): fixed memory, no insert. Slots are claimed and updated
/// here, read by the loader; sized by the loader (`--table-size` / `SOURCE_WAYS` lines).
#[map]
pub(crate) static SOURCES: Array<SourceLine> =
    Array::with_max_entries(DEFAULT_TABLE_SIZE / SOURCE_WAYS as u32, 0);

/// The source table's hash key and line count; written once by the loader that makes
/// the table (pinned with it), read here on every charge.
#[map]
pub(crate) static SOURCE_HASH: Array<SourceHash> = Array::with_max_entries(1, 0);

/// Sources that proved their address (a completed TCP handshake, a valid DNS cookie),
/// in lines of `PROVEN_WAYS` slots keyed by `SOURCE_HASH`'s secret: fixed memory, no
/// insert. Written and read here (`proof`); read by the loader (status, metrics).
#[map]
pub(crate) static PROVEN: Array<ProvenLine> = Array::with_max_entries(PROVEN_LINES, 0);

/// The server budget's GCRA theoretical arrival time, shared by all CPUs; written here only.
#[map]
pub(crate) static BUDGET: Array<u64> = Array::with_max_entries(1, 0);

/// Each CPU's server-budget queries paid for in `BUDGET` and not yet admitted; here only.
#[map]
pub(crate) static BUDGET_CREDIT: PerCpuArray<BudgetCredit> = PerCpuArray::with_max_entries(1, 0);

/// IPv4 allow/deny prefixes with hit counters; entries written by the loader, hits counted here.
#[map]
pub(crate) static LIST_V4: LpmTrie<[u8; 4], ListEntry> =
    LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

/// IPv6 allow/deny prefixes with hit counters; entries written by the loader, hits counted here.
#[map]
pub(crate) static LIST_V6: LpmTrie<[u8; 16], ListEntry> =
    LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

/// Answers this host awaits: its outstanding upstream UDP queries (address, ports, DNS
/// ID) and its upstream TCP connections. Written by the egress program, which sees them
/// leave; read and retired (UDP, on the answer) by `dns_xdp`. Bounded: when full, the
/// oldest record makes room (its answer is then dropped, and its resolver retries).
#[map]
pub(crate) static AWAITED: LruHashMap<AwaitedKey, AwaitedState> =
    LruHashMap::with_max_entries(AWAITED_TABLE_SIZE, 0);

/// Datagrams whose first fragment was an admitted answer, so that their later fragments
/// (which carry no ports) pass too. Written and read by `dns_xdp`.
#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, u64> =
    LruHashMap::with_max_entries(FRAGMENT_TABLE_SIZE, 0);

/// Values `dns_xdp` hands from one step to the next through memory, two slots per CPU,
/// so that the verifier no longer knows them (`untracked`): slot `STEP_SLOT` a query's
/// charge (bucket and cost), slot `PACKET_SLOT` the parsed transport (its offsets
/// differ by header layout) and then the verdict, for the sampler. What follows is then
/// verified once for all their values, not once for each (see docs/ARCHITECTURE.md,
/// "Verifier budget"). Written and read back by `dns_xdp` only.
#[map]
pub(crate) static UNTRACKED: PerCpuArray<[u64; UNTRACKED_WORDS]> =
    PerCpuArray::with_max_entries(2, 0);

/// `UNTRACKED` slot of the values handed between the policy's steps.
pub(crate) const STEP_SLOT: u32 = 0;
/// `UNTRACKED` slot of what holds for the whole packet: its transport, then its verdict.
pub(crate) const PACKET_SLOT: u32 = 1;

/// The global slip cap's GCRA theoretical arrival time, shared by all CPUs; written here.
#[map]
pub(crate) static SLIP_CAP: Array<u64> = Array::with_max_entries(1, 0);

/// The per-destination-prefix slip caps' GCRA theoretical arrival times, one slot per
/// hash of the prefix (`slip_prefix_slot`): an array, so a flood of new destinations
/// costs no insert. Prefixes that share a slot share a cap: slips only get rarer.
#[map]
pub(crate) static SLIP_PREFIX_CAPS: Array<u64> = Array::with_max_entries(SLIP_PREFIX_SLOTS, 0);

/// Sampled queries with their verdicts (`QuerySample`); written here, read by one
/// reader at a time (`dns-xdp log`, `top --queries`). Pinned, so readers find it.
#[map]
pub(crate) static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLE_RING_BYTES, 0);

/// Queries seen per decision on this CPU, to sample one in `sample_every`; written and
/// read here only.
#[map]
pub(crate) static SAMPLE_TICKS: PerCpuArray<[u64; DECISIONS]> = PerCpuArray::with_max_entries(1, 0);

/// The samples-per-second cap's GCRA theoretical arrival time, shared by all CPUs;
/// written here.
#[map]
pub(crate) static SAMPLE_CAP: Array<u64> = Array::with_max_entries(1, 0);

/// Samples by decision and question type, one copy per CPU; written here, summed by the
/// loader (metrics).
#[map]
pub(crate) static SAMPLED_TYPES: PerCpuArray<SampledTypes> = PerCpuArray::with_max_entries(1, 0);

/// The live configuration.
#[inline(always)]
pub(crate) fn config() -> Result<&'static Config, ()> {
    let slot = CONFIG_SLOT.get(0).ok_or(())?;
    CONFIG.get(*slot & 1).ok_or(())
}

/// `value` stored in `UNTRACKED` and read back: the same value, unknown to the verifier.
#[inline(always)]
pub(crate) fn untracked<T: Copy>(value: T) -> Option<T> {
    untracked_in(STEP_SLOT, value)
}

/// Word `STEP_EXEMPT` of `STEP_SLOT`: whether a valid DNS cookie exempts the query from
/// the levels, written for every query before the policy reads it (`police_query`), so
/// that the cookie check's paths end there and one state goes on.
pub(crate) const STEP_EXEMPT: usize = 2;

/// Writes word `STEP_EXEMPT` of `STEP_SLOT`.
#[inline(always)]
pub(crate) fn set_step_exempt(value: u64) {
    if let Some(slot) = UNTRACKED.get_ptr_mut(STEP_SLOT) {
        // SAFETY: this CPU's slot, `UNTRACKED_WORDS` words long; volatile, so the write
        // is not forwarded to the read.
        unsafe { core::ptr::write_volatile(&raw mut (*slot)[STEP_EXEMPT], value) };
    }
}

/// Word `STEP_EXEMPT` of `STEP_SLOT`, as `set_step_exempt` left it (0 if unreadable).
#[inline(always)]
pub(crate) fn step_exempt() -> u64 {
    UNTRACKED.get_ptr_mut(STEP_SLOT).map_or(0, |slot| {
        // SAFETY: as `set_step_exempt`.
        unsafe { core::ptr::read_volatile(&raw const (*slot)[STEP_EXEMPT]) }
    })
}

/// `value` stored at the start of `UNTRACKED` slot `slot` and read back.
#[inline(always)]
pub(crate) fn untracked_in<T: Copy>(slot: u32, value: T) -> Option<T> {
    const { assert!(size_of::<T>() <= size_of::<[u64; UNTRACKED_WORDS]>() && align_of::<T>() <= 8) };
    let slot = UNTRACKED.get_ptr_mut(slot)?.cast::<T>();
    // SAFETY: this CPU's slot, large and aligned enough (checked above); XDP programs do
    // not nest on a CPU. Volatile, so the compiler does not forward the value past the map.
    unsafe {
        core::ptr::write_volatile(slot, value);
        Some(core::ptr::read_volatile(slot))
    }
}

/// Per-CPU scratch for a slipped reply's UDP checksum: pseudo-header, UDP header and
/// message, zero-padded to a multiple of 4 bytes for `bpf_csum_diff`. Written and read by
/// `slip` only.
#[map]
pub(crate) static SCRATCH: PerCpuArray<[u8; SLIP_SCRATCH_LEN]> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch of a cookie check: the source address, and what it reads from the
/// packet (DNS header, OPT record, option header, cookie). Written and read by
/// `cookie` only.
#[map]
pub(crate) static COOKIE_SCRATCH: PerCpuArray<[u8; COOKIE_SCRATCH_LEN]> =
    PerCpuArray::with_max_entries(1, 0);
