//! Query samples: one in N queries of each decision (counted per CPU), within a cap of
//! samples per second for all CPUs, copied with their verdict into the `SAMPLES` ring
//! buffer (`dns-xdp log`, `top --queries`) and counted by question type
//! (`SAMPLED_TYPES`, the metrics).

use crate::maps::{
    COUNTERS, PACKET_SLOT, SAMPLE_CAP, SAMPLE_TICKS, SAMPLED_TYPES, SAMPLES, UNTRACKED, config,
    untracked,
};
use crate::parse::{Frame, StoredTransport, Transport};
use crate::policy::{Take, take};
use crate::question::scan_name;
use aya_ebpf::bindings::xdp_md;
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes};
use aya_ebpf::programs::XdpContext;
use dns_xdp_common::maps::UNTRACKED_WORDS;
use dns_xdp_common::samples::{
    DECISIONS, Decision, NO_LEVEL, QTYPE_NONE, QTYPE_SLOTS, QuerySample, SAMPLE_MESSAGE_LEN,
    qtype_slot, question_type,
};
use dns_xdp_common::{Counter, DNS_HEADER_LEN, Family, L4, NAME_COMPLETE, NAME_NONE, NameScan};

/// `Verdict::decision` of a packet that is not sampled (a TCP segment passed without a
/// charge: an ACK, a FIN).
const UNSAMPLED: u8 = 0xfe;

/// The policy's verdict on a query: the XDP action, and why (for the sampler).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) action: u32,
    /// A `Decision`, or `UNSAMPLED`.
    pub(crate) decision: u8,
    /// The level that refused the query, or `NO_LEVEL`.
    pub(crate) level: u8,
    _reserved: [u8; 2],
}

impl Verdict {
    #[inline(always)]
    pub(crate) const fn new(action: u32, decision: Decision) -> Self {
        Self::at_level(action, decision, NO_LEVEL)
    }

    #[inline(always)]
    pub(crate) const fn at_level(action: u32, decision: Decision, level: u8) -> Self {
        Self {
            action,
            decision: decision as u8,
            level,
            _reserved: [0; 2],
        }
    }

    /// A verdict the sampler leaves alone.
    #[inline(always)]
    pub(crate) const fn unsampled(action: u32) -> Self {
        Self {
            action,
            decision: UNSAMPLED,
            level: NO_LEVEL,
            _reserved: [0; 2],
        }
    }
}

/// `PACKET_SLOT` of `UNTRACKED` as the sampler reads it: the transport `forget_layout`
/// left there, then the verdict.
#[repr(C)]
#[derive(Clone, Copy)]
struct PacketSlot {
    transport: StoredTransport,
    verdict: Verdict,
}

const _: () = assert!(size_of::<PacketSlot>() <= UNTRACKED_WORDS * 8);

/// The action of `verdict`, after sampling the query if it is due. The sampler reads the
/// packet's transport and verdict from `PACKET_SLOT`, not from the caller: every path of
/// the policy arrives with its own constants, and the sampler is then verified once for
/// all of them, and adds nothing to the main frame's stack.
#[inline(always)]
pub(crate) fn sample(ctx: &XdpContext, verdict: Verdict) -> u32 {
    let Some(slot) = UNTRACKED.get_ptr_mut(PACKET_SLOT) else {
        return verdict.action;
    };
    // SAFETY: this CPU's packet slot, large and aligned enough (checked above).
    unsafe { (*slot.cast::<PacketSlot>()).verdict = verdict };
    sample_apart(ctx.ctx)
}

/// `sample`'s work in a function of its own with a small frame (the main one is large,
/// and the two share the 512-byte stack). The sampling itself runs as a one-turn
/// `bpf_loop` callback: called directly, its checks made the verifier's precision
/// tracking reach back into the policy's states, which then stopped pruning each other
/// (368 k instructions verified instead of 215 k).
#[inline(never)]
fn sample_apart(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext { ctx };
    let Some(slot) = UNTRACKED.get_ptr(PACKET_SLOT) else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's packet slot, written by this packet's `forget_layout` and `sample`.
    let slot = unsafe { &*slot.cast::<PacketSlot>() };
    let mut context = ctx;
    // SAFETY: the callback reads `context` only, which outlives the call.
    unsafe {
        aya_ebpf::helpers::bpf_loop(
            1,
            sample_callback as *mut c_void,
            core::ptr::from_mut(&mut context).cast(),
            0,
        )
    };
    slot.verdict.action
}

/// The sampler proper, as `bpf_loop`'s callback; returns 1 (one turn).
extern "C" fn sample_callback(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: the XdpContext sample_apart handed to bpf_loop.
    let ctx = unsafe { &*context.cast::<XdpContext>() };
    let Some(slot) = UNTRACKED.get_ptr(PACKET_SLOT) else {
        return 1;
    };
    // SAFETY: this CPU's packet slot, written by this packet's `forget_layout` and `sample`.
    let slot = unsafe { &*slot.cast::<PacketSlot>() };
    let _ = take_sample(ctx, &Transport::from_stored(slot.transport), &slot.verdict);
    1
}

#[inline(always)]
fn take_sample(ctx: &XdpContext, transport: &Transport, verdict: &Verdict) -> Option<()> {
    let config = config().ok()?;
    let decision = usize::from(verdict.decision);
    if config.sample_every == 0 || decision >= DECISIONS {
        return None;
    }
    // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not nest on a CPU.
    let ticks = unsafe { &mut *SAMPLE_TICKS.get_ptr_mut(0)? };
    let tick = ticks.get_mut(decision)?;
    // The first of each N: a decision seen once is sampled at once.
    let seen = *tick;
    *tick += 1;
    if seen % u64::from(config.sample_every) != 0 {
        return None;
    }
    // SAFETY: as above.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(0)? };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let within_cap = !config.sample_cap.is_on()
        || SAMPLE_CAP.get_ptr_mut(0).is_some_and(|tat| {
            matches!(take(tat, now, &config.sample_cap, 1, 0), Take::Admitted(_))
        });
    if !within_cap {
        counters.bump(Counter::SamplesCapped);
        return None;
    }
    let Some(mut entry) = SAMPLES.reserve::<QuerySample>(0) else {
        counters.bump(Counter::SamplesLost);
        return None;
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` is the ring buffer's reserved record, ours until submitted; every
    // field but the message's unused tail is written before it is.
    let qtype = unsafe { fill(ctx, &mut *sample, transport, verdict, config, now) };
    entry.submit(0);
    counters.bump(Counter::SamplesTaken);
    // SAFETY: as `ticks`.
    let types = unsafe { &mut *SAMPLED_TYPES.get_ptr_mut(0)? };
    let slot = types.counts.get_mut(decision)?.get_mut(qtype)?;
    *slot += 1;
    Some(())
}

/// Writes the sample of the packet `transport` describes into `sample`; returns the
/// `SAMPLED_TYPES` slot of its question type.
#[inline(always)]
fn fill(
    ctx: &XdpContext,
    sample: &mut QuerySample,
    transport: &Transport,
    verdict: &Verdict,
    config: &dns_xdp_common::Config,
    now: u64,
) -> usize {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let l3 = transport.l3;
    let v6 = transport.family == Family::V6;
    sample.time_ns = now;
    // Built as a value: zeroing the tail of an array in place would call `memset`, one
    // more stack frame.
    sample.source = if v6 {
        frame.ipv6_source(l3).unwrap_or([0; 16])
    } else {
        let address = frame.ipv4_source(l3).unwrap_or([0; 4]);
        u128::from(u32::from_ne_bytes(address)).to_le_bytes()
    };
    sample.family = if v6 { 6 } else { 4 };
    sample.protocol = u8::from(transport.l4 == L4::Tcp);
    sample.decision = verdict.decision;
    sample.level = verdict.level;
    sample.prefix_len = match config.levels.get(usize::from(verdict.level)) {
        Some(level) if v6 => level.v6_prefix_len,
        Some(level) => level.v4_prefix_len,
        None if v6 => 128,
        None => 32,
    };
    sample.action = verdict.action as u8;
    sample._reserved = 0;
    // The DNS message: a datagram's payload, a TCP segment's first message (after its
    // 2-byte length); none in a later fragment or a connection attempt.
    let (start, available) = if transport.later_fragment || transport.syn {
        (0, 0)
    } else if transport.l4 == L4::Tcp {
        (
            transport.payload + 2,
            transport.payload_len.saturating_sub(2),
        )
    } else {
        (transport.payload, transport.payload_len)
    };
    let mut len = available.min(SAMPLE_MESSAGE_LEN);
    if len != 0 {
        // SAFETY: copies `len` bytes (1..=SAMPLE_MESSAGE_LEN) of the packet into the
        // record's message array, which is that long; the helper checks the packet's bounds.
        let copied = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                start as u32,
                sample.message.as_mut_ptr().cast::<c_void>(),
                len as u32,
            )
        };
        if copied != 0 {
            len = 0;
        }
    }
    // The name is walked in the packet, whole (the copy may end before a malformed
    // one does). Its result crosses `untracked`: each way the walk can end would
    // otherwise be verified on its own through the rest.
    let scan = if len > DNS_HEADER_LEN {
        scan_name(ctx, start + DNS_HEADER_LEN, start + available)
    } else {
        NameScan::new(NAME_NONE, start)
    };
    let scan = untracked([u64::from(scan.status), (scan.name_end - start) as u64])
        .map_or(NameScan::new(NAME_NONE, 0), |[status, end]| {
            NameScan::new(status as u8, end as usize)
        });
    let question = if scan.status == NAME_COMPLETE {
        question_type(&sample.message, len, scan.name_end)
    } else {
        None
    };
    sample.message_len = len as u16;
    sample.name_status = scan.status;
    sample.name_end = scan.name_end as u16;
    let (qtype, qclass) = question.unwrap_or((0, 0));
    sample.qtype = qtype;
    sample.qclass = qclass;
    match question {
        Some(_) => qtype_slot(qtype).min(QTYPE_SLOTS - 1),
        None => QTYPE_NONE,
    }
}
