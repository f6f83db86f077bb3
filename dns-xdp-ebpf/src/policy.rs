//! The policy on a query: what its transport demands (sanity, the TCP rules), then its
//! source's allow/deny lists, prefix levels and buckets, the server budget, and slip.

use crate::budget::{
    BUDGET_ADMITTED, BUDGET_SHED_UNPROVEN, QUERY_COST, QUERY_HEAVY, QUERY_PROVEN, budget_spend,
};
use crate::cookie::{COOKIE_DUE, cookie_find, cookie_verify};
use crate::ingress::refuse;
use crate::maps::{
    LIST_V4, LIST_V6, SLIP_CAP, SLIP_PREFIX_CAPS, SOURCE_HASH, SOURCES, set_step_exempt,
    step_exempt, untracked,
};
use crate::parse::{Frame, Transport};
use crate::sample::Verdict;
use crate::slip::{SLIP_CAPPED, SLIP_SENT};
use crate::tcp::{CHARGE_DUE, StreamCharge, police_segment_apart};
use aya_ebpf::bindings::xdp_action;
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_loop};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::XdpContext;
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};
use dns_xdp_common::samples::{Decision, NO_LEVEL};
use dns_xdp_common::tcp::{MAX_SEGMENT_COST, TcpStream};
use dns_xdp_common::{
    BUCKET_TCP_CONNECT, BUCKET_TCP_DATA, BUCKET_UDP, COOKIE_NONE, COOKIE_VALID, Config, Counter,
    Counters, Family, L4, LIST_ALLOW, Level, Limit, ListEntry, MAX_LEVELS, SLIP_PREFIX_SLOTS,
    SLIP_V4_PREFIX, SLIP_V6_PREFIX, SOURCE_WAYS, SourceCounts, SourceKey, SourceLine, claimed_tat,
    evictability, gcra_ceiling, gcra_charge, is_heavy, line_index, query_defect, slip_prefix_hash,
    slot_tag, source_hash, victim_forgetting,
};

/// Compare-and-swap attempts on one bucket before a query is refused as contended. Each
/// failed attempt means another CPU admitted a packet of the same source meanwhile.
/// Every attempt of every such loop is verified on its own (about 25 000 instructions
/// each over all the loops, docs/ARCHITECTURE.md "Verifier budget"): three keep the
/// program within its budget on every kernel tried.
pub(crate) const MAX_CAS_ATTEMPTS: usize = 3;

/// A query's source address.
pub(crate) enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Source {
    /// The allow/deny entry with the longest prefix matching this source, if any.
    #[inline(always)]
    fn listed(&self, config: &Config) -> Option<&'static ListEntry> {
        match self {
            Source::V4(addr) if config.has_list(Family::V4) => LIST_V4.get(Key::new(32, *addr)),
            Source::V6(addr) if config.has_list(Family::V6) => LIST_V6.get(Key::new(128, *addr)),
            _ => None,
        }
    }

    /// The key of this source's bucket at `level`: its address masked to the level's prefix.
    #[inline(always)]
    fn key(&self, level: &Level, index: u8) -> SourceKey {
        match self {
            Source::V4(addr) => SourceKey::v4(*addr, level, index),
            Source::V6(addr) => SourceKey::v6(*addr, level, index),
        }
    }
}

/// The verdict on a query: what its transport demands first (a UDP datagram that can
/// be a query, a TCP segment of an accepted connection), then its source's.
#[inline(always)]
pub(crate) fn police_query(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> Verdict {
    let mut stream = None;
    let bucket = match transport.l4 {
        // Sanity first: a datagram that cannot be a query is refused whatever its source.
        L4::Udp if config.sanity() && !transport.later_fragment => {
            let defect = match frame.dns_header(transport.payload, transport.payload_len) {
                None => Some(Counter::NotQueryShort),
                Some((flags, qdcount)) => query_defect(flags, qdcount, config.allowed_opcodes),
            };
            if let Some(defect) = defect {
                counters.bump(defect);
                return Verdict::new(refuse(config, counters), Decision::NotQuery);
            }
            BUCKET_UDP
        }
        L4::Udp => BUCKET_UDP,
        // A connection attempt with data (Fast Open) would hand the stack a query before
        // the connection has a stream to count it in; a fragmented segment cannot be
        // read here at all. Neither is needed: clients retry with a plain SYN, and TCP
        // is sized to fit the path.
        L4::Tcp if transport.first_fragment || (transport.syn && transport.payload_len != 0) => {
            counters.bump(Counter::TcpUnusual);
            return Verdict::new(refuse(config, counters), Decision::TcpRefused);
        }
        L4::Tcp if transport.syn => BUCKET_TCP_CONNECT,
        L4::Tcp => {
            let mut charge = StreamCharge {
                messages: 0,
                state: core::ptr::null_mut(),
                next: TcpStream::default(),
            };
            let verdict = police_segment_apart(ctx, transport, config, counters, &mut charge);
            if verdict == xdp_action::XDP_PASS {
                // A segment without data (an ACK, a FIN): nothing to sample.
                return Verdict::unsampled(verdict);
            }
            if verdict != CHARGE_DUE {
                return Verdict::new(verdict, Decision::TcpRefused);
            }
            // One call of the policy below: each call site is verified on its own.
            stream = Some(charge);
            BUCKET_TCP_DATA
        }
    };
    let cost = stream.map_or(1, |charge| u64::from(charge.messages));
    if bucket == BUCKET_UDP && config.metered() && config.cookies.is_on() {
        check_cookie(ctx, transport);
    } else {
        set_step_exempt(0);
    }
    let verdict = police_source(ctx, frame, transport, config, counters, bucket, cost);
    if let (Some(charge), xdp_action::XDP_PASS) = (stream, verdict.action) {
        // SAFETY: the connection's record, looked up by police_segment.
        unsafe { (*charge.state).stream = charge.next };
    }
    verdict
}

/// Checks the UDP query's DNS cookie (`cookie`): a valid one exempts the query from the
/// prefix levels (not from the budget), which `set_step_exempt` hands to the policy,
/// whatever the outcome, so that no query inherits another's. A function of its own:
/// its values take a stack frame of their own, not the program's (which the level
/// walk's callback and `charge_bucket` add to, within the verifier's 512 bytes).
#[inline(never)]
fn check_cookie(ctx: &XdpContext, transport: &Transport) {
    let mut cookie = u64::from(COOKIE_NONE);
    if !transport.later_fragment {
        cookie = cookie_find(
            ctx.ctx,
            (transport.payload as u64 & 0xffff) << 16 | (transport.payload_len as u64 & 0xffff),
            (transport.l3 as u64 & 0xffff) << 8 | u64::from(transport.family.code()),
        );
        if cookie == COOKIE_DUE {
            cookie = cookie_verify();
        }
    }
    set_step_exempt(u64::from(cookie == u64::from(COOKIE_VALID)));
}

/// The verdict of the source's lists and buckets on `cost` queries (a TCP segment
/// may carry several) charged to its buckets of kind `bucket` (`BUCKET_*`): allow/deny
/// lists first (longest prefix wins), then the levels and the budget. With neither
/// configured, the source address is not even read.
#[inline(always)]
pub(crate) fn police_source(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
    bucket: u8,
    cost: u64,
) -> Verdict {
    let admitted = Verdict::new(xdp_action::XDP_PASS, Decision::Admitted);
    if !config.metered() && !config.has_list(transport.family) {
        return admitted;
    }
    let source = if transport.family == Family::V6 {
        frame.ipv6_source(transport.l3).map(Source::V6)
    } else {
        frame.ipv4_source(transport.l3).map(Source::V4)
    };
    let Ok(source) = source else {
        return admitted;
    };
    if let Some(entry) = source.listed(config) {
        atomic_add(core::ptr::from_ref(&entry.hits).cast_mut(), 1);
        if entry.action == LIST_ALLOW {
            counters.bump(Counter::Allowed);
            return Verdict::new(xdp_action::XDP_PASS, Decision::Allowed);
        }
        counters.bump(Counter::Denied);
        return Verdict::new(refuse(config, counters), Decision::Denied);
    }
    if !config.metered() {
        return admitted;
    }
    // Which bucket and how much: constants on some paths, so hidden from the verifier,
    // which would otherwise verify the level walk once for each.
    let Some([bucket, cost]) = untracked([u64::from(bucket), cost]) else {
        return admitted;
    };
    // A valid DNS cookie (`check_cookie`): no level is charged.
    let exempt = step_exempt() != 0;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut walk = LevelWalk {
        source,
        now,
        tcp: bucket as u8,
        cost,
        refused: false,
        level: 0,
        heavy: false,
        exempt,
    };
    // One verified step per level (bpf_loop): unrolled, four levels of compare-and-swap
    // loops multiply the paths the verifier walks. The count is a constant: the
    // verifier tracks it precisely, and a count computed from the configuration would
    // be one more value that splits its states (levels that are off return at once, and
    // so do all of them for a query a valid cookie exempts).
    // SAFETY: the callback reads and writes `walk` only, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_LEVELS as u32,
            level_step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        )
    };
    // Refused by a level, or shed by the budget; and whether a truncated reply may be
    // due (one in `slip` refused by a level; every unproven one the budget sheds).
    let (decision, slip_due) = if walk.refused {
        counters.bump(Counter::RateLimited);
        counters.bump_level_limited(usize::from(walk.level));
        let turn = config.slip != 0
            && counters
                .get(Counter::RateLimited)
                .is_multiple_of(u64::from(config.slip));
        (Decision::Limited, turn)
    } else {
        // Connection attempts are not charged to the budget: a new client must be able
        // to complete a handshake (and so prove its address) however loaded the budget.
        let spent = if !config.budget.is_on() || bucket as u8 == BUCKET_TCP_CONNECT {
            BUDGET_ADMITTED
        } else {
            let mut query = cost & QUERY_COST;
            if walk.heavy {
                query |= QUERY_HEAVY;
            }
            if exempt || bucket as u8 == BUCKET_TCP_DATA {
                query |= QUERY_PROVEN;
            }
            budget_spend(
                ctx.ctx,
                walk.now,
                (transport.l3 as u64 & 0xffff) << 8 | u64::from(transport.family.code()),
                query,
            )
        };
        if spent == BUDGET_ADMITTED {
            counters.bump(Counter::RatePassed);
            return admitted;
        }
        (
            Decision::BudgetShed,
            spent == BUDGET_SHED_UNPROVEN && config.budget_slip(),
        )
    };
    let limited_here = walk.refused;
    let level = if limited_here { walk.level } else { NO_LEVEL };
    let refused = |action| Verdict::at_level(action, decision, level);
    if config.dry_run() {
        return refused(refuse(config, counters));
    }
    // A truncated reply sends a real client to TCP, where spoofing cannot follow.
    if slip_due && transport.l4 == L4::Udp && !transport.later_fragment {
        match crate::slip::slip(ctx, transport) {
            SLIP_CAPPED => {
                counters.bump(Counter::SlipCapped);
                return refused(xdp_action::XDP_DROP);
            }
            SLIP_SENT => {
                counters.bump(if limited_here {
                    Counter::Slipped
                } else {
                    Counter::BudgetSlipped
                });
                return Verdict::at_level(xdp_action::XDP_TX, Decision::Slipped, level);
            }
            _ => {}
        }
    }
    refused(xdp_action::XDP_DROP)
}

/// One query's walk over the prefix levels: `bpf_loop`'s context, on the caller's stack.
pub(crate) struct LevelWalk {
    source: Source,
    now: u64,
    /// Which of the source's buckets (`BUCKET_*`): UDP queries, TCP connection
    /// attempts and TCP data segments each have their own.
    tcp: u8,
    /// Queries to charge: 1, or the messages of a TCP segment.
    cost: u64,
    /// A level refused the query (the walk stops there).
    refused: bool,
    /// Which level refused it.
    level: u8,
    /// A level that admitted the query has spent more than half its burst.
    heavy: bool,
    /// A valid DNS cookie exempts the query from every level.
    exempt: bool,
}

/// Charges the query to level `index`'s bucket (narrowest level first: a source over
/// its own limit is refused before it spends the aggregate buckets of its neighbours).
/// Returns 1 to stop the walk at a refusal, 0 to go on.
pub(crate) extern "C" fn level_step(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk` is the `LevelWalk` police_query handed to bpf_loop.
    let walk = unsafe { &mut *walk.cast::<LevelWalk>() };
    // The configuration looked up again rather than handed over: a pointer more in the
    // walk would grow the program's frame past what this chain leaves (512 bytes).
    let Ok(config) = crate::maps::config() else {
        return 1;
    };
    let index = index as usize;
    if walk.exempt {
        return 1;
    }
    let Some(level) = config.levels.get(index) else {
        return 1;
    };
    if !level.limit.is_on() {
        return 0;
    }
    let mut key = walk.source.key(level, index as u8);
    key.tcp = walk.tcp;
    let [addr_lo, addr_hi, meta] = key_words(&key);
    match charge_bucket(addr_lo, addr_hi, meta, walk.now, walk.cost) {
        CHARGE_REFUSED => {
            walk.refused = true;
            walk.level = index as u8;
            1
        }
        admitted => {
            walk.heavy |= admitted == CHARGE_HEAVY;
            0
        }
    }
}

/// `charge_bucket`: admitted, the bucket has half its burst or more left.
pub(crate) const CHARGE_LIGHT: u64 = 0;
/// `charge_bucket`: admitted, the bucket has spent more than half its burst.
pub(crate) const CHARGE_HEAVY: u64 = 1;
/// `charge_bucket`: refused (and counted in the slot).
pub(crate) const CHARGE_REFUSED: u64 = 2;

/// A key as `charge_bucket`'s three scalar arguments: the address's two halves, then
/// family, prefix length, level and bucket.
#[inline(always)]
fn key_words(key: &SourceKey) -> [u64; 3] {
    let mut halves = [[0u8; 8]; 2];
    halves[0].copy_from_slice(&key.addr[..8]);
    halves[1].copy_from_slice(&key.addr[8..]);
    [
        u64::from_ne_bytes(halves[0]),
        u64::from_ne_bytes(halves[1]),
        u64::from(key.family)
            | u64::from(key.prefix_len) << 8
            | u64::from(key.level) << 16
            | u64::from(key.tcp) << 24,
    ]
}

/// Charges `cost` queries to the bucket of the key `key_words` made, at its level's
/// limit, and counts a refusal in its slot: `CHARGE_*`. A global function (its own BTF
/// linkage), so the verifier checks it once, on its own, with scalar arguments, and
/// every caller state of the level walk sees only a call returning a number: the
/// table's hash, slot search and claim are not verified again for each.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn charge_bucket(addr_lo: u64, addr_hi: u64, meta: u64, now: u64, cost: u64) -> u64 {
    let Ok(config) = crate::maps::config() else {
        return CHARGE_LIGHT;
    };
    let Some(counters) = crate::maps::COUNTERS.get_ptr_mut(0) else {
        return CHARGE_LIGHT;
    };
    // SAFETY: this CPU's counters; XDP programs do not nest on a CPU.
    let counters = unsafe { &mut *counters };
    let mut key = SourceKey {
        family: meta as u8,
        prefix_len: (meta >> 8) as u8,
        level: (meta >> 16) as u8,
        tcp: (meta >> 24) as u8,
        ..SourceKey::default()
    };
    key.addr[..8].copy_from_slice(&addr_lo.to_ne_bytes());
    key.addr[8..].copy_from_slice(&addr_hi.to_ne_bytes());
    let Some(level) = config.levels.get(usize::from(key.level)) else {
        return CHARGE_LIGHT;
    };
    match charge(key, now, &level.limit, cost, counters) {
        Charged::Admitted { heavy } => {
            if heavy {
                CHARGE_HEAVY
            } else {
                CHARGE_LIGHT
            }
        }
        Charged::Refused(state) => {
            if config.dry_run() {
                atomic_add(&mut state.would_drop, 1);
            } else {
                atomic_add(&mut state.dropped, 1);
            }
            CHARGE_REFUSED
        }
    }
}

/// What charging a bucket did.
pub(crate) enum Charged {
    /// Admitted (or not stored: fail open, counted); `heavy` if the bucket has spent
    /// more than half its burst.
    Admitted { heavy: bool },
    /// Refused; the slot's counters, for the refusal to be counted.
    Refused(&'static mut SourceCounts),
}

/// Charges `cost` queries to the bucket of `key`, in the slot of its line that holds
/// it or the one it claims (`claim`). A TCP data bucket may run into debt by one
/// segment's charge (`gcra_charge`), which is not forgiven.
#[inline(always)]
pub(crate) fn charge(
    key: SourceKey,
    now: u64,
    limit: &Limit,
    cost: u64,
    counters: &mut Counters,
) -> Charged {
    let debt = if key.tcp == BUCKET_TCP_DATA {
        MAX_SEGMENT_COST
    } else {
        0
    };
    let Some(table) = SOURCE_HASH.get(0) else {
        counters.bump(Counter::TableFull);
        return Charged::Admitted { heavy: false };
    };
    let hash = source_hash(&key, &table.secret);
    let Some(line) = SOURCES.get_ptr_mut(line_index(hash, table.lines)) else {
        // No table yet (lines 0 until the loader has written SOURCE_HASH).
        counters.bump(Counter::TableFull);
        return Charged::Admitted { heavy: false };
    };
    // SAFETY: a map value; every field is read and written atomically or volatile.
    let line = unsafe { &mut *line };
    let tag = slot_tag(hash);
    let found = slot_of(line, tag);
    let way = match found {
        Some(way) => way,
        None => match claim(line, tag, &key, now, limit) {
            Some(way) => {
                counters.bump(Counter::SourcesCreated);
                way
            }
            None => {
                // Another CPU claimed the slot at the same moment: this one query
                // passes unlimited (counted), the next finds its slot.
                counters.bump(Counter::TableFull);
                return Charged::Admitted { heavy: false };
            }
        },
    };
    // Which slot: hidden from the verifier, which would otherwise verify what follows
    // once per slot.
    let Some(way) = untracked(way) else {
        return Charged::Admitted { heavy: false };
    };
    let way = way & (SOURCE_WAYS - 1);
    // SAFETY: `way` is below SOURCE_WAYS; aligned u64s in the map value.
    unsafe { core::ptr::write_volatile(&mut line.lasts[way], now) };
    let counts = &mut line.counts[way];
    match take(&mut line.tats[way], now, limit, cost, debt) {
        Take::Admitted(tat) => {
            atomic_add(&mut counts.passed, cost);
            Charged::Admitted {
                heavy: is_heavy(tat, now, limit),
            }
        }
        Take::Refused => Charged::Refused(counts),
        Take::Contended => {
            counters.bump(Counter::RateContended);
            Charged::Refused(counts)
        }
    }
}

/// The slot of `line` holding `tag`, if any.
#[inline(always)]
fn slot_of(line: &SourceLine, tag: u64) -> Option<usize> {
    (0..SOURCE_WAYS).find(|&way| {
        // SAFETY: an aligned u64 in the map value, written by other CPUs.
        unsafe { core::ptr::read_volatile(&line.tags[way]) == tag }
    })
}

/// Claims a slot of `line` for the prefix `key` (tag `tag`): the most evictable one
/// (`victim`), its bucket inherited up to the prefix's ceiling (`claimed_tat`), its
/// counters started afresh. `None` if another CPU claimed it first.
#[inline(always)]
fn claim(
    line: &mut SourceLine,
    tag: u64,
    key: &SourceKey,
    now: u64,
    limit: &Limit,
) -> Option<usize> {
    let score = |way: usize| {
        let counts = &line.counts[way];
        // SAFETY: aligned u64s in the map value, written by other CPUs.
        unsafe {
            let hits = core::ptr::read_volatile(&counts.passed)
                + core::ptr::read_volatile(&counts.dropped)
                + core::ptr::read_volatile(&counts.would_drop);
            evictability(core::ptr::read_volatile(&line.lasts[way]), hits, now)
        }
    };
    let way = untracked(victim_forgetting(score, untracked))? & (SOURCE_WAYS - 1);
    // SAFETY: aligned u64s in the map value; the tag is claimed with a compare-and-swap,
    // so two CPUs never both take the slot. Until the key is written, a report may show
    // the slot's old key with the new counters: reports read the table unlocked.
    unsafe {
        let old = core::ptr::read_volatile(&line.tags[way]);
        let (_, swapped) = atomic_cxchg::<
            u64,
            { AtomicOrdering::SeqCst },
            { AtomicOrdering::SeqCst },
        >(&mut line.tags[way], old, tag);
        if !swapped {
            return None;
        }
        let tat = core::ptr::read_volatile(&line.tats[way]);
        core::ptr::write_volatile(&mut line.tats[way], claimed_tat(tat, now, limit));
        core::ptr::write_volatile(&mut line.counts[way], SourceCounts::default());
        core::ptr::write_volatile(&mut line.keys[way], *key);
    }
    Some(way)
}

pub(crate) enum Take {
    /// Admitted; the bucket's new theoretical arrival time.
    Admitted(u64),
    Refused,
    Contended,
}

/// One GCRA step of `cost` on a shared bucket: exact under concurrency, since every
/// admission moves `tat` forward by `cost` intervals with a compare-and-swap. `debt`:
/// charges beyond the burst the bucket may legitimately owe (not forgiven).
#[inline(always)]
pub(crate) fn take(tat: *mut u64, now: u64, limit: &Limit, cost: u64, debt: u64) -> Take {
    for _ in 0..MAX_CAS_ATTEMPTS {
        // SAFETY: `tat` is an aligned u64 in a map value.
        let current = unsafe { core::ptr::read_volatile(tat) };
        match gcra_charge(current, now, limit, cost) {
            None => {
                if current > debt_ceiling(now, limit, debt) {
                    forgive_debt(tat, current, limit, debt);
                }
                return Take::Refused;
            }
            Some(next) => {
                // SAFETY: `tat` is an aligned u64 in a map value.
                let (_, swapped) = unsafe {
                    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        tat, current, next,
                    )
                };
                if swapped {
                    return Take::Admitted(next);
                }
            }
        }
    }
    Take::Contended
}

/// Spends one slipped reply from the caps: the destination's prefix (the query's
/// source: a reply goes back to it) first, so one victim cannot spend them all, then
/// all destinations together.
#[inline(always)]
pub(crate) fn within_slip_caps(source: &Source, now: u64, config: &Config) -> bool {
    if config.slip_prefix_cap.is_on() {
        let slot = slip_prefix_slot(source);
        let within = SLIP_PREFIX_CAPS.get_ptr_mut(slot).is_some_and(|tat| {
            matches!(
                take(tat, now, &config.slip_prefix_cap, 1, 0),
                Take::Admitted(_)
            )
        });
        if !within {
            return false;
        }
    }
    if !config.slip_cap.is_on() {
        return true;
    }
    SLIP_CAP
        .get_ptr_mut(0)
        .is_some_and(|tat| matches!(take(tat, now, &config.slip_cap, 1, 0), Take::Admitted(_)))
}

/// The `SLIP_PREFIX_CAPS` slot of the destination prefix of a reply to `source`.
#[inline(always)]
pub(crate) fn slip_prefix_slot(source: &Source) -> u32 {
    let hash = match source {
        Source::V4(addr) => slip_prefix_hash(&addr[..usize::from(SLIP_V4_PREFIX / 8)], 4),
        Source::V6(addr) => slip_prefix_hash(&addr[..usize::from(SLIP_V6_PREFIX / 8)], 6),
    };
    hash % SLIP_PREFIX_SLOTS
}

/// Cuts a bucket's `tat` (read as `current`) back to the ceiling of `limit`, if it is
/// debt from a slower limit that has since been raised.
///
/// The ceiling is taken at a clock read *after* `current`: the `now` of the query being
/// refused may predate admissions other CPUs made meanwhile with a later `now` (whose
/// `tat` legitimately runs up to their own ceiling), and cutting those back would give
/// their time away again: more than burst + rate × time admitted (the test
/// `one_source_from_every_cpu_stays_within_burst_plus_rate` caught it). Every `tat`
/// written under the current limit before that read lies at or below its ceiling, so
/// only real debt is forgiven.
#[inline(always)]
pub(crate) fn forgive_debt(tat: *mut u64, current: u64, limit: &Limit, debt: u64) {
    // SAFETY: a helper without arguments.
    let ceiling = debt_ceiling(unsafe { bpf_ktime_get_ns() }, limit, debt);
    if current > ceiling {
        // SAFETY: `tat` is an aligned u64 in a map value. A failed swap means another
        // CPU moved `tat` meanwhile: nothing to forgive then.
        let _ = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, ceiling,
            )
        };
    }
}

/// The latest `tat` a bucket can reach under `limit` at `now` when it may owe `debt`
/// charges beyond its burst.
#[inline(always)]
pub(crate) fn debt_ceiling(now: u64, limit: &Limit, debt: u64) -> u64 {
    gcra_ceiling(now, limit) + limit.charge_ns(debt)
}

#[inline(always)]
pub(crate) fn atomic_add(target: *mut u64, value: u64) {
    // SAFETY: `target` is an aligned u64 in a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}
