//! dns-xdp kernel programs.
#![no_std]
#![no_main]
// The BPF target has no stable compare-and-swap: the intrinsics lower to BPF atomics.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bench;
mod parse;
mod slip;

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action, xdp_md},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::error;
use dns_xdp_common::{
    AWAITED_TABLE_SIZE, AWAITED_TCP_IDLE_NS, AWAITED_UDP_NS, AwaitedKey, AwaitedState,
    BUCKET_TCP_CONNECT, BUCKET_TCP_DATA, BUCKET_UDP, Class, Config, Counter, Counters,
    DEFAULT_TABLE_SIZE, EgressCounter, EgressCounters, FRAGMENT_TABLE_SIZE, FRAGMENT_WINDOW_NS,
    FragmentKey, L4, LIST_ALLOW, Level, Limit, ListEntry, MAX_LEVELS, MAX_LIST_ENTRIES,
    SLIP_PREFIX_SLOTS, SLIP_V4_PREFIX, SLIP_V6_PREFIX, SourceKey, SourceState, budget_gcra,
    gcra_ceiling, gcra_charge, is_heavy, query_defect, slip_prefix_hash,
    tcp::{
        MAX_SEGMENT_COST, MAX_SEGMENT_MESSAGES, STREAM_DESYNCED, SegmentPlan, TcpStream, Walked,
        finish_walk, plan_segment, seq_latest, seq_within,
    },
};
use parse::{Frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Transport};

/// Runtime configuration (DNS ports, limit, prefixes, flags), double-buffered: the loader
/// writes the slot not in use, then flips CONFIG_SLOT; read once per packet.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(2, 0);

/// Which CONFIG slot is live (0 or 1); flipped by the loader after writing the other.
#[map]
static CONFIG_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Packet counters by class and decision, one `Counters` per CPU; written here, summed by the loader.
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// DNS leaving the interface by direction, packets and bytes, one copy per CPU; written by
/// the egress program, summed by the loader.
#[map]
static EGRESS_COUNTERS: PerCpuArray<EgressCounters> = PerCpuArray::with_max_entries(1, 0);

/// Per-source-prefix GCRA buckets and query counters; created and updated here, read by the loader.
/// Sized by the loader (`--table-size`); when full the least recently used prefix makes room.
#[map]
static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(DEFAULT_TABLE_SIZE, 0);

/// The server budget's GCRA theoretical arrival time, shared by all CPUs; written here only.
#[map]
static BUDGET: Array<u64> = Array::with_max_entries(1, 0);

/// IPv4 allow/deny prefixes with hit counters; entries written by the loader, hits counted here.
#[map]
static LIST_V4: LpmTrie<[u8; 4], ListEntry> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

/// IPv6 allow/deny prefixes with hit counters; entries written by the loader, hits counted here.
#[map]
static LIST_V6: LpmTrie<[u8; 16], ListEntry> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

/// Answers this host awaits: its outstanding upstream UDP queries (address, ports, DNS
/// ID) and its upstream TCP connections. Written by the egress program, which sees them
/// leave; read and retired (UDP, on the answer) by `dns_xdp`. Bounded: when full, the
/// oldest record makes room (its answer is then dropped, and its resolver retries).
#[map]
static AWAITED: LruHashMap<AwaitedKey, AwaitedState> =
    LruHashMap::with_max_entries(AWAITED_TABLE_SIZE, 0);

/// Datagrams whose first fragment was an admitted answer, so that their later fragments
/// (which carry no ports) pass too. Written and read by `dns_xdp`.
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, u64> =
    LruHashMap::with_max_entries(FRAGMENT_TABLE_SIZE, 0);

/// Values `dns_xdp` hands from one step to the next through memory, one slot per CPU,
/// so that the verifier no longer knows them (`untracked`): the parsed transport (its
/// offsets differ by header layout), a query's charge (bucket and cost). What follows
/// is then verified once for all their values, not once for each (see
/// docs/ARCHITECTURE.md, "Verifier budget"). Written and read back by `dns_xdp` only.
#[map]
static UNTRACKED: PerCpuArray<[u64; UNTRACKED_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// The size of an `UNTRACKED` slot, in 8-byte words.
const UNTRACKED_WORDS: usize = 6;

/// The global slip cap's GCRA theoretical arrival time, shared by all CPUs; written here.
#[map]
static SLIP_CAP: Array<u64> = Array::with_max_entries(1, 0);

/// The per-destination-prefix slip caps' GCRA theoretical arrival times, one slot per
/// hash of the prefix (`slip_prefix_slot`): an array, so a flood of new destinations
/// costs no insert. Prefixes that share a slot share a cap: slips only get rarer.
#[map]
static SLIP_PREFIX_CAPS: Array<u64> = Array::with_max_entries(SLIP_PREFIX_SLOTS, 0);

/// Compare-and-swap attempts on one bucket before a query is refused as contended. Each
/// failed attempt means another CPU admitted a packet of the same source meanwhile.
const MAX_CAS_ATTEMPTS: usize = 8;

const BPF_NOEXIST: u64 = 1;

#[xdp]
pub fn dns_xdp(ctx: XdpContext) -> u32 {
    match try_dns_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => {
            // Unreachable while the maps exist: array lookups at index 0 cannot fail.
            error!(
                &ctx,
                "dns-xdp: map lookup failed, passing packets uncounted"
            );
            xdp_action::XDP_PASS
        }
    }
}

/// The live configuration.
#[inline(always)]
fn config() -> Result<&'static Config, ()> {
    let slot = CONFIG_SLOT.get(0).ok_or(())?;
    CONFIG.get(*slot & 1).ok_or(())
}

#[inline(always)]
fn try_dns_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let config = config()?;
    let counters = COUNTERS.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU array slot is only touched by programs on this CPU, one at a time.
    let counters = unsafe { &mut *counters };
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let parsed = frame.transport();
    let class = match &parsed {
        Ok(transport) => transport.class(&config.dns_ports),
        Err(class) => *class,
    };
    counters.bump(Counter::Packets);
    counters.bump(class.counter());
    let transport = match (parsed, class) {
        (_, Class::NonDns) => return Ok(xdp_action::XDP_PASS),
        // What the parser cannot finish (a header chain past its bounds, a truncated or
        // inconsistent header) is dropped: the kernel may still deliver some of it, and
        // nothing unparsed gets past the policy.
        (Err(_), _) => return Ok(refuse(config, counters)),
        (Ok(transport), _) => forget_layout(transport).ok_or(())?,
    };
    Ok(match class {
        Class::Query { .. } => police_query(ctx, &frame, &transport, config, counters),
        Class::Answer { .. } => admit_answer(&frame, &transport, config, counters),
        _ => admit_fragment(ctx, &frame, &transport, config, counters),
    })
}

/// The source address of the packet `transport` describes, in a 16-byte key field.
#[inline(always)]
fn source_address(frame: &Frame, transport: &Transport) -> Option<[u8; 16]> {
    let mut address = [0u8; 16];
    if transport.ipv6 {
        address = frame.ipv6_source(transport.l3).ok()?;
    } else {
        address[..4].copy_from_slice(&frame.ipv4_source(transport.l3).ok()?);
    }
    Some(address)
}

/// An answer (a packet from a DNS port) passes only if it answers a query or belongs to
/// a TCP connection this host sent (`AWAITED`, recorded on egress). A UDP answer retires
/// its query; if it is a datagram's first fragment, the rest of it is awaited.
#[inline(always)]
fn admit_answer(
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> u32 {
    let tcp = transport.l4 == L4::Tcp;
    let id = if tcp {
        Some(0)
    } else {
        frame.dns_id(transport.payload, transport.payload_len)
    };
    let (Some(remote), Some(id), true) =
        (source_address(frame, transport), id, config.backending())
    else {
        counters.bump(Counter::AnswerUnsolicited);
        return refuse(config, counters);
    };
    let key = AwaitedKey::new(
        remote,
        transport.src_port,
        transport.dst_port,
        id,
        transport.ipv6,
        tcp,
    );
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !awaited(&key, now) {
        counters.bump(Counter::AnswerUnsolicited);
        return refuse(config, counters);
    }
    if !tcp {
        let _ = AWAITED.remove(key);
        if transport.first_fragment {
            let fragment = FragmentKey::new(remote, transport.fragment_id, transport.ipv6);
            let _ = FRAGMENTS.insert(fragment, now + FRAGMENT_WINDOW_NS, 0);
        }
    }
    counters.bump(Counter::AnswerAdmitted);
    xdp_action::XDP_PASS
}

/// Whether `AWAITED` holds `key`, unexpired at `now`.
#[inline(always)]
fn awaited(key: &AwaitedKey, now: u64) -> bool {
    // SAFETY: a map value, read once.
    AWAITED
        .get_ptr(key)
        .is_some_and(|state| unsafe { (*state).expires_ns } >= now)
}

/// The record of the connection this server accepted that the TCP segment `transport`
/// describes (sent to a DNS port) belongs to: its SYN-ACK (and every segment since)
/// left through the egress program, which recorded the connection. Unexpired.
#[inline(always)]
fn accepted_connection(frame: &Frame, transport: &Transport) -> Option<*mut AwaitedState> {
    let key = AwaitedKey::new(
        source_address(frame, transport)?,
        transport.src_port,
        transport.dst_port,
        0,
        transport.ipv6,
        true,
    );
    let state = AWAITED.get_ptr_mut(key)?;
    // SAFETY: a map value, read once; a helper without arguments.
    let live = unsafe { (*state).expires_ns >= bpf_ktime_get_ns() };
    live.then_some(state)
}

/// A later fragment passes if its datagram's first fragment was an admitted answer;
/// any other is charged to its source's buckets as a query is (it may be a large
/// query's), and decided by the lists and levels like one.
#[inline(always)]
fn admit_fragment(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> u32 {
    if let Some(remote) = source_address(frame, transport) {
        let key = FragmentKey::new(remote, transport.fragment_id, transport.ipv6);
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: a map value, read once.
        if FRAGMENTS
            .get_ptr(key)
            .is_some_and(|expires| unsafe { *expires } >= now)
        {
            counters.bump(Counter::FragmentAdmitted);
            return xdp_action::XDP_PASS;
        }
    }
    counters.bump(Counter::FragmentPoliced);
    police_query(ctx, frame, transport, config, counters)
}

/// `transport` with its values unknown to the verifier, so that nothing after this point
/// is verified once per header layout the parser can leave (each layout ends with
/// different constant offsets, and states that differ in a constant do not merge).
#[inline(always)]
fn forget_layout(transport: Transport) -> Option<Transport> {
    untracked(transport.to_stored()).map(Transport::from_stored)
}

/// `value` stored in `UNTRACKED` and read back: the same value, unknown to the verifier.
#[inline(always)]
fn untracked<T: Copy>(value: T) -> Option<T> {
    const { assert!(size_of::<T>() <= size_of::<[u64; UNTRACKED_WORDS]>() && align_of::<T>() <= 8) };
    let slot = UNTRACKED.get_ptr_mut(0)?.cast::<T>();
    // SAFETY: this CPU's slot, large and aligned enough (checked above); XDP programs do
    // not nest on a CPU. Volatile, so the compiler does not forward the value past the map.
    unsafe {
        core::ptr::write_volatile(slot, value);
        Some(core::ptr::read_volatile(slot))
    }
}

/// A query's source address.
enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Source {
    /// The allow/deny entry with the longest prefix matching this source, if any.
    #[inline(always)]
    fn listed(&self, config: &Config) -> Option<&'static ListEntry> {
        match self {
            Source::V4(addr) if config.has_list(false) => LIST_V4.get(Key::new(32, *addr)),
            Source::V6(addr) if config.has_list(true) => LIST_V6.get(Key::new(128, *addr)),
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
fn police_query(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> u32 {
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
                return refuse(config, counters);
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
            return refuse(config, counters);
        }
        L4::Tcp if transport.syn => BUCKET_TCP_CONNECT,
        L4::Tcp => {
            let mut charge = StreamCharge {
                messages: 0,
                state: core::ptr::null_mut(),
                next: TcpStream::default(),
            };
            let verdict = police_segment_apart(ctx, transport, config, counters, &mut charge);
            if verdict != CHARGE_DUE {
                return verdict;
            }
            // One call of the policy below: each call site is verified on its own.
            stream = Some(charge);
            BUCKET_TCP_DATA
        }
    };
    let cost = stream.map_or(1, |charge| u64::from(charge.messages));
    let verdict = police_source(ctx, frame, transport, config, counters, bucket, cost);
    if let (Some(charge), xdp_action::XDP_PASS) = (stream, verdict) {
        // SAFETY: the connection's record, looked up by police_segment.
        unsafe { (*charge.state).stream = charge.next };
    }
    verdict
}

/// `police_segment_apart`'s verdict when the segment is to be charged.
const CHARGE_DUE: u32 = u32::MAX;

/// `police_segment` as a function of its own: its locals (keys, stream states) take a
/// stack frame of their own instead of the program's, which the level walk's callback
/// adds to (together they must stay within the verifier's 512 bytes). Returns the
/// verdict, or `CHARGE_DUE` with the charge in `charge`.
#[inline(never)]
fn police_segment_apart(
    ctx: &XdpContext,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
    charge: &mut StreamCharge,
) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    match police_segment(ctx, &frame, transport, config, counters) {
        Ok(due) => {
            *charge = due;
            CHARGE_DUE
        }
        Err(verdict) => verdict,
    }
}

/// A TCP data segment's charge, and the stream after it once it passes.
#[derive(Clone, Copy)]
struct StreamCharge {
    messages: u32,
    state: *mut AwaitedState,
    next: TcpStream,
}

/// A TCP segment to a DNS port, other than a connection attempt. It must belong to a
/// connection this server accepted and acknowledge something the server sent, or it is
/// dropped: no RST or ACK then answers a spoofed source, and no segment reaches the
/// stack unpoliced. A segment with data is charged the queries it carries (`tcp`
/// module) to the source's TCP data buckets; the stream advances only if it passes.
/// `Err`: the verdict, when no charge is due.
#[inline(always)]
fn police_segment(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> Result<StreamCharge, u32> {
    let Some(state_ptr) = accepted_connection(frame, transport) else {
        counters.bump(Counter::TcpUnsolicited);
        return Err(refuse(config, counters));
    };
    // SAFETY: a map value. The egress program writes its other fields, each whole;
    // only this program writes `stream`.
    let state = unsafe { &mut *state_ptr };
    let flags = transport.tcp_flags;
    // Without an ACK only a reset is valid (the stack checks its sequence number and
    // rate-limits what it sends back).
    let blind = if flags & TCP_ACK == 0 {
        flags & TCP_RST == 0
    } else {
        // SAFETY: fields the egress program writes whole.
        let (first, next) = unsafe {
            (
                core::ptr::read_volatile(&state.server_first),
                core::ptr::read_volatile(&state.server_next),
            )
        };
        !seq_within(transport.ack_seq, first, next)
    };
    if blind {
        counters.bump(Counter::TcpBadAck);
        return Err(refuse(config, counters));
    }
    if transport.payload_len == 0 {
        return Err(xdp_action::XDP_PASS);
    }
    let len = transport.payload_len as u32;
    // SAFETY: as above.
    let acked = unsafe { core::ptr::read_volatile(&state.client_acked) };
    let stream = state.stream;
    let (messages, next) = match plan_segment(&stream, acked, transport.seq, len) {
        SegmentPlan::Duplicate => return Err(xdp_action::XDP_PASS),
        SegmentPlan::Gap => {
            counters.bump(Counter::TcpOutOfOrder);
            return Err(refuse(config, counters));
        }
        SegmentPlan::Charge { messages, next } => (messages, next),
        SegmentPlan::Walk { offset } => {
            let walked = walk_messages(ctx, transport.payload, len, offset);
            finish_walk(&stream, acked, transport.seq, len, walked)
        }
    };
    if messages == 0 {
        state.stream = next;
        return Err(xdp_action::XDP_PASS);
    }
    counters.bump(Counter::TcpSegmentCharged);
    counters.add_to(Counter::TcpMessagesCharged, u64::from(messages));
    Ok(StreamCharge {
        messages,
        state: state_ptr,
        next,
    })
}

/// Reads the length prefixes of the messages that start in a segment's payload (at
/// `payload`, `len` bytes), from `offset` on: a `bpf_loop`, one prefix per step.
#[inline(always)]
fn walk_messages(ctx: &XdpContext, payload: usize, len: u32, offset: u32) -> Walked {
    if offset >= len {
        return Walked {
            messages: 0,
            next_offset: offset,
            complete: true,
        };
    }
    let walked = walk_messages_from(ctx.ctx, payload as u32 + offset, payload as u32 + len);
    Walked {
        messages: (walked >> 32) as u32 & 0xff,
        next_offset: walked as u32 - payload as u32,
        complete: walked >> 40 != 0,
    }
}

/// The walk itself, from `at` to `end` (frame offsets): a function of its own, so that
/// its context is on its own stack frame, not on the program's (which the level walk's
/// callback adds to; together they must stay within 512 bytes). Returns the offset of
/// the next message in the low 32 bits, the messages read in bits 32-39, and bit 40 if
/// the walk reached the end.
#[inline(never)]
fn walk_messages_from(ctx: *mut xdp_md, at: u32, end: u32) -> u64 {
    let mut walk = MessageWalk {
        ctx,
        at,
        end,
        messages: 0,
        cut: false,
    };
    // SAFETY: the callback reads and writes `walk` only, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_SEGMENT_MESSAGES,
            message_step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        )
    };
    let complete = !walk.cut && walk.at >= walk.end;
    u64::from(walk.at) | u64::from(walk.messages & 0xff) << 32 | u64::from(complete) << 40
}

/// A walk over the messages in a TCP segment: `bpf_loop`'s context, on the caller's stack.
struct MessageWalk {
    ctx: *mut xdp_md,
    /// Where the next length prefix starts, and where the segment's payload ends.
    at: u32,
    end: u32,
    /// The prefixes read so far, from the loop's index: a count the step incremented
    /// would be a new constant in each iteration, and the verifier would walk them all.
    messages: u32,
    /// The segment ends inside a length prefix.
    cut: bool,
}

/// Reads the length prefix at `walk.at`: 0 to go on to the next message, 1 to stop.
extern "C" fn message_step(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk` is the `MessageWalk` walk_messages handed to bpf_loop.
    let walk = unsafe { &mut *walk.cast::<MessageWalk>() };
    if walk.at >= walk.end {
        return 1;
    }
    let mut prefix = [0u8; 2];
    // SAFETY: a two-byte read from the frame into a local.
    if walk.at + 2 > walk.end
        || unsafe { bpf_xdp_load_bytes(walk.ctx, walk.at, prefix.as_mut_ptr().cast(), 2) } != 0
    {
        walk.cut = true;
        return 1;
    }
    walk.messages = index as u32 + 1;
    walk.at += 2 + u32::from(u16::from_be_bytes(prefix));
    0
}

/// The verdict of the source's lists and buckets on `cost` queries (a TCP segment
/// may carry several) charged to its buckets of kind `bucket` (`BUCKET_*`): allow/deny
/// lists first (longest prefix wins), then the levels and the budget. With neither
/// configured, the source address is not even read.
#[inline(always)]
fn police_source(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
    bucket: u8,
    cost: u64,
) -> u32 {
    if !config.metered() && !config.has_list(transport.ipv6) {
        return xdp_action::XDP_PASS;
    }
    let source = if transport.ipv6 {
        frame.ipv6_source(transport.l3).map(Source::V6)
    } else {
        frame.ipv4_source(transport.l3).map(Source::V4)
    };
    let Ok(source) = source else {
        return xdp_action::XDP_PASS;
    };
    if let Some(entry) = source.listed(config) {
        atomic_add(core::ptr::from_ref(&entry.hits).cast_mut(), 1);
        if entry.action == LIST_ALLOW {
            counters.bump(Counter::Allowed);
            return xdp_action::XDP_PASS;
        }
        counters.bump(Counter::Denied);
        return refuse(config, counters);
    }
    if !config.metered() {
        return xdp_action::XDP_PASS;
    }
    // Which bucket and how much: constants on some paths, so hidden from the verifier,
    // which would otherwise verify the level walk once for each.
    let Some([bucket, cost]) = untracked([u64::from(bucket), cost]) else {
        return xdp_action::XDP_PASS;
    };
    let mut walk = LevelWalk {
        config,
        counters,
        source,
        now: unsafe { bpf_ktime_get_ns() },
        tcp: bucket as u8,
        cost,
        refused: false,
        heavy: false,
    };
    // One verified step per level (bpf_loop): unrolled, four levels of compare-and-swap
    // loops multiply the paths the verifier walks. The count is a constant: the
    // verifier tracks it precisely, and a count computed from the configuration would
    // be one more value that splits its states (levels that are off return at once).
    // SAFETY: the callback reads and writes `walk` only, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_LEVELS as u32,
            level_step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        )
    };
    if !walk.refused {
        if !config.budget.is_on() || spend_budget(walk.now, &config.budget, walk.heavy, cost) {
            counters.bump(Counter::RatePassed);
            return xdp_action::XDP_PASS;
        }
        counters.bump(if walk.heavy {
            Counter::BudgetShedHeavy
        } else {
            Counter::BudgetShedLight
        });
        return refuse(config, counters);
    }
    counters.bump(Counter::RateLimited);
    if config.dry_run() {
        return refuse(config, counters);
    }
    // Slip one in N refused UDP queries (N counted per CPU): a truncated reply sends a
    // real client to TCP, where spoofing cannot follow.
    if transport.l4 == L4::Udp
        && !transport.later_fragment
        && config.slip != 0
        && counters
            .get(Counter::RateLimited)
            .is_multiple_of(u64::from(config.slip))
    {
        if !within_slip_caps(&walk.source, walk.now, config) {
            counters.bump(Counter::SlipCapped);
            return xdp_action::XDP_DROP;
        }
        if slip::truncated_reply(ctx, transport).is_some() {
            counters.bump(Counter::Slipped);
            return xdp_action::XDP_TX;
        }
    }
    xdp_action::XDP_DROP
}

/// One query's walk over the prefix levels: `bpf_loop`'s context, on the caller's stack.
struct LevelWalk {
    config: *const Config,
    counters: *mut Counters,
    source: Source,
    now: u64,
    /// Which of the source's buckets (`BUCKET_*`): UDP queries, TCP connection
    /// attempts and TCP data segments each have their own.
    tcp: u8,
    /// Queries to charge: 1, or the messages of a TCP segment.
    cost: u64,
    /// A level refused the query (the walk stops there).
    refused: bool,
    /// A level that admitted the query has spent more than half its burst.
    heavy: bool,
}

/// Charges the query to level `index`'s bucket (narrowest level first: a source over
/// its own limit is refused before it spends the aggregate buckets of its neighbours).
/// Returns 1 to stop the walk at a refusal, 0 to go on.
extern "C" fn level_step(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk` is the `LevelWalk` police_query handed to bpf_loop.
    let walk = unsafe { &mut *walk.cast::<LevelWalk>() };
    // SAFETY: map values the caller looked up; the caller waits for the walk.
    let (config, counters) = unsafe { (&*walk.config, &mut *walk.counters) };
    let index = index as usize;
    let Some(level) = config.levels.get(index) else {
        return 1;
    };
    if !level.limit.is_on() {
        return 0;
    }
    let mut key = walk.source.key(level, index as u8);
    key.tcp = walk.tcp;
    match charge(key, walk.now, &level.limit, walk.cost, counters) {
        Charged::Admitted { heavy } => {
            walk.heavy |= heavy;
            0
        }
        Charged::Refused(state) => {
            counters.bump_level_limited(index);
            if config.dry_run() {
                atomic_add(&mut state.would_drop, 1);
            } else {
                atomic_add(&mut state.dropped, 1);
            }
            walk.refused = true;
            1
        }
    }
}

/// What charging a bucket did.
enum Charged {
    /// Admitted (or not stored: fail open, counted); `heavy` if the bucket has spent
    /// more than half its burst.
    Admitted {
        heavy: bool,
    },
    Refused(&'static mut SourceState),
}

/// Spends `cost` queries of the server budget. Heavy queries (from a source or prefix
/// that has spent more than half a burst at some level) may use the budget's burst;
/// light ones also a reserve of one more burst that heavy ones cannot touch.
#[inline(always)]
fn spend_budget(now: u64, limit: &Limit, heavy: bool, cost: u64) -> bool {
    let Some(tat) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    for _ in 0..MAX_CAS_ATTEMPTS {
        // SAFETY: `tat` is an aligned u64 in a map value.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let Some(next) = budget_gcra(current, now, limit, heavy, cost) else {
            return false;
        };
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, next,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}

/// Charges `cost` queries to the bucket of `key`. A TCP data bucket may run into debt by
/// one segment's charge (`gcra_charge`), which is not forgiven.
#[inline(always)]
fn charge(key: SourceKey, now: u64, limit: &Limit, cost: u64, counters: &mut Counters) -> Charged {
    let debt = if key.tcp == BUCKET_TCP_DATA {
        MAX_SEGMENT_COST
    } else {
        0
    };
    let state = match SOURCES.get_ptr_mut(key) {
        Some(state) => state,
        None => {
            // A new prefix: its first packet always conforms (a full bucket admits any charge).
            let fresh = SourceState {
                tat_ns: now + limit.charge_ns(cost),
                passed: cost,
                dropped: 0,
                would_drop: 0,
            };
            match SOURCES.insert(key, fresh, BPF_NOEXIST) {
                Ok(()) => {
                    counters.bump(Counter::SourcesCreated);
                    return Charged::Admitted {
                        heavy: is_heavy(fresh.tat_ns, now, limit),
                    };
                }
                // Another CPU created it first (EEXIST), or the insert failed while
                // one did (the hash map's bucket lock can give up under contention):
                // take from its bucket below. Passing the query unlimited here would
                // admit one more than the burst.
                Err(_) => match SOURCES.get_ptr_mut(key) {
                    Some(state) => state,
                    None => {
                        counters.bump(Counter::TableFull);
                        return Charged::Admitted { heavy: false };
                    }
                },
            }
        }
    };
    // SAFETY: `state` points into the map value; every field is updated atomically.
    let state = unsafe { &mut *state };
    match take(&mut state.tat_ns, now, limit, cost, debt) {
        Take::Admitted(tat) => {
            atomic_add(&mut state.passed, cost);
            Charged::Admitted {
                heavy: is_heavy(tat, now, limit),
            }
        }
        Take::Refused => Charged::Refused(state),
        Take::Contended => {
            counters.bump(Counter::RateContended);
            Charged::Refused(state)
        }
    }
}

enum Take {
    /// Admitted; the bucket's new theoretical arrival time.
    Admitted(u64),
    Refused,
    Contended,
}

/// One GCRA step of `cost` on a shared bucket: exact under concurrency, since every
/// admission moves `tat` forward by `cost` intervals with a compare-and-swap. `debt`:
/// charges beyond the burst the bucket may legitimately owe (not forgiven).
#[inline(always)]
fn take(tat: *mut u64, now: u64, limit: &Limit, cost: u64, debt: u64) -> Take {
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
fn within_slip_caps(source: &Source, now: u64, config: &Config) -> bool {
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
fn slip_prefix_slot(source: &Source) -> u32 {
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
fn forgive_debt(tat: *mut u64, current: u64, limit: &Limit, debt: u64) {
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
fn debt_ceiling(now: u64, limit: &Limit, debt: u64) -> u64 {
    gcra_ceiling(now, limit) + limit.charge_ns(debt)
}

/// Drop, or pass and count in dry-run.
#[inline(always)]
fn refuse(config: &Config, counters: &mut Counters) -> u32 {
    if config.dry_run() {
        counters.bump(Counter::DryRunWouldDrop);
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn atomic_add(target: *mut u64, value: u64) {
    // SAFETY: `target` is an aligned u64 in a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}

/// Egress (TC, TCX where the kernel has it): counts responses and upstream queries
/// leaving, with the same parser as XDP. Observes only: always hands the packet on.
#[classifier]
pub fn dns_xdp_egress(ctx: TcContext) -> i32 {
    let _ = try_dns_xdp_egress(&ctx);
    TC_ACT_UNSPEC
}

/// Bytes made linear before parsing: every header the parser may read in a DNS packet.
const EGRESS_PULL_BYTES: u32 = 256;

#[inline(always)]
fn try_dns_xdp_egress(ctx: &TcContext) -> Result<(), ()> {
    let config = config()?;
    let counters = EGRESS_COUNTERS.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU array slot is only touched by programs on this CPU, one at a time.
    let counters = unsafe { &mut *counters };
    counters.bump(EgressCounter::Packets);
    let len = ctx.len();
    // Headers may sit in paged fragments on egress; make them linear (a no-op when they are).
    let _ = ctx.pull_data(if len < EGRESS_PULL_BYTES {
        len
    } else {
        EGRESS_PULL_BYTES
    });
    let frame = Frame::local(ctx.data(), ctx.data_end());
    let parsed = frame.transport();
    let class = match &parsed {
        Ok(transport) => transport.class(&config.dns_ports),
        Err(class) => *class,
    };
    if let Some((packets, bytes)) = EgressCounter::for_class(class) {
        counters.bump(packets);
        counters.add_to(bytes, u64::from(len));
    }
    // Upstream queries and connections (backending), and the TCP connections this
    // server accepted (its SYN-ACK and answers): what XDP will let back in.
    let record = match class {
        Class::Query { .. } => config.backending(),
        Class::Answer { l4: L4::Tcp, .. } => true,
        _ => false,
    };
    if let (Ok(transport), true) = (parsed, record) {
        let recorded = if matches!(class, Class::Answer { .. }) {
            track_server_segment(&frame, &transport)
        } else {
            await_answer(&frame, &transport)
        };
        if recorded.is_some() {
            counters.bump(EgressCounter::AwaitedRecorded);
        }
    }
    Ok(())
}

/// The destination address of the packet `transport` describes, in a 16-byte key field.
#[inline(always)]
fn destination_address(frame: &Frame, transport: &Transport) -> Option<[u8; 16]> {
    let mut address = [0u8; 16];
    if transport.ipv6 {
        address = frame.ipv6_destination(transport.l3).ok()?;
    } else {
        address[..4].copy_from_slice(&frame.ipv4_destination(transport.l3).ok()?);
    }
    Some(address)
}

/// Records a segment the server sends on a connection a client opened: its SYN-ACK
/// creates the record (the client's stream starts at the number it acknowledges), later
/// ones move what the client may acknowledge and how far the server acknowledged the
/// client; a reset ends it.
#[inline(always)]
fn track_server_segment(frame: &Frame, transport: &Transport) -> Option<()> {
    let key = AwaitedKey::new(
        destination_address(frame, transport)?,
        transport.dst_port,
        transport.src_port,
        0,
        transport.ipv6,
        true,
    );
    let flags = transport.tcp_flags;
    if flags & TCP_RST != 0 {
        let _ = AWAITED.remove(key);
        return None;
    }
    // SAFETY: a helper without arguments.
    let expires_ns = unsafe { bpf_ktime_get_ns() } + AWAITED_TCP_IDLE_NS;
    let (seq, ack) = (transport.seq, transport.ack_seq);
    // SYN and FIN each take a sequence number.
    let sent_end = seq
        .wrapping_add(transport.payload_len as u32)
        .wrapping_add(u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0));
    let existing = AWAITED.get_ptr_mut(key);
    // SAFETY: a map value, read once.
    let resent_syn_ack =
        existing.is_some_and(|state| unsafe { (*state).server_first } == seq.wrapping_add(1));
    match existing {
        // A SYN-ACK sent again keeps the stream: what the client sent meanwhile may
        // have reached the stack.
        Some(state) if flags & TCP_SYN == 0 || resent_syn_ack => {
            // SAFETY: a map value; `dns_xdp` reads these fields whole.
            let state = unsafe { &mut *state };
            state.expires_ns = expires_ns;
            state.server_next = seq_latest(state.server_next, sent_end);
            if flags & TCP_ACK != 0 {
                state.client_acked = seq_latest(state.client_acked, ack);
            }
            Some(())
        }
        _ => {
            // A new connection; or one older than its record (evicted, or opened before
            // dns-xdp), whose message boundaries are unknown.
            let syn_ack = flags & TCP_SYN != 0;
            let state = AwaitedState {
                expires_ns,
                server_first: if syn_ack { seq.wrapping_add(1) } else { seq },
                server_next: sent_end,
                client_acked: ack,
                stream: TcpStream {
                    end: ack,
                    next_message: ack,
                    flags: if syn_ack { 0 } else { STREAM_DESYNCED },
                },
            };
            AWAITED.insert(key, state, 0).ok()
        }
    }
}

/// Records an upstream query (UDP) or a segment of an upstream TCP connection leaving,
/// so that XDP admits what comes back: the key the answer will carry, with how long to
/// await it.
#[inline(always)]
fn await_answer(frame: &Frame, transport: &Transport) -> Option<()> {
    let tcp = transport.l4 == L4::Tcp;
    let id = if tcp {
        0
    } else {
        frame.dns_id(transport.payload, transport.payload_len)?
    };
    let key = AwaitedKey::new(
        destination_address(frame, transport)?,
        transport.dst_port,
        transport.src_port,
        id,
        transport.ipv6,
        tcp,
    );
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = AwaitedState {
        expires_ns: now
            + if tcp {
                AWAITED_TCP_IDLE_NS
            } else {
                AWAITED_UDP_NS
            },
        ..AwaitedState::default()
    };
    AWAITED.insert(key, state, 0).ok()
}

/// Minimal program for benchmarks: the cost of running any XDP program at all.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
