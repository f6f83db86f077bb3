//! TCP segments to a DNS port, other than connection attempts: the connection check,
//! the acknowledgement check, and the charge of the queries a segment carries (the
//! rules are `dns_xdp_common::tcp`'s; this module reads the segment for them).

use crate::ingress::refuse;
use crate::maps::AWAITED;
use crate::parse::{Frame, TCP_ACK, TCP_RST, Transport};
use aya_ebpf::bindings::{xdp_action, xdp_md};
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_loop, bpf_xdp_load_bytes};
use aya_ebpf::programs::XdpContext;
use dns_xdp_common::tcp::{
    MAX_SEGMENT_MESSAGES, SegmentPlan, TcpStream, Walked, finish_walk, plan_segment, seq_within,
};
use dns_xdp_common::{AwaitedKey, AwaitedState, Config, Counter, Counters};

/// The record of the connection this server accepted that the TCP segment `transport`
/// describes (sent to a DNS port) belongs to: its SYN-ACK (and every segment since)
/// left through the egress program, which recorded the connection. Unexpired.
#[inline(always)]
pub(crate) fn accepted_connection(
    frame: &Frame,
    transport: &Transport,
) -> Option<*mut AwaitedState> {
    let key = AwaitedKey::new(
        frame.source_address(transport)?,
        transport.src_port,
        transport.dst_port,
        0,
        transport.family,
        true,
    );
    let state = AWAITED.get_ptr_mut(key)?;
    // SAFETY: a map value, read once; a helper without arguments.
    let live = unsafe { (*state).expires_ns >= bpf_ktime_get_ns() };
    live.then_some(state)
}

/// `police_segment_apart`'s verdict when the segment is to be charged.
pub(crate) const CHARGE_DUE: u32 = u32::MAX;

/// `police_segment` as a function of its own: its locals (keys, stream states) take a
/// stack frame of their own instead of the program's, which the level walk's callback
/// adds to (together they must stay within the verifier's 512 bytes). Returns the
/// verdict, or `CHARGE_DUE` with the charge in `charge`.
#[inline(never)]
pub(crate) fn police_segment_apart(
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
pub(crate) struct StreamCharge {
    pub(crate) messages: u32,
    pub(crate) state: *mut AwaitedState,
    pub(crate) next: TcpStream,
}

/// A TCP segment to a DNS port, other than a connection attempt. It must belong to a
/// connection this server accepted and acknowledge something the server sent, or it is
/// dropped: no RST or ACK then answers a spoofed source, and no segment reaches the
/// stack unpoliced. A segment with data is charged the queries it carries (`tcp`
/// module) to the source's TCP data buckets; the stream advances only if it passes.
/// `Err`: the verdict, when no charge is due.
#[inline(always)]
pub(crate) fn police_segment(
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
pub(crate) fn walk_messages(ctx: &XdpContext, payload: usize, len: u32, offset: u32) -> Walked {
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
pub(crate) fn walk_messages_from(ctx: *mut xdp_md, at: u32, end: u32) -> u64 {
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
pub(crate) struct MessageWalk {
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
pub(crate) extern "C" fn message_step(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk` is the `MessageWalk` walk_messages handed to bpf_loop.
    let walk = unsafe { &mut *walk.cast::<MessageWalk>() };
    if walk.at >= walk.end {
        return 1;
    }
    let mut prefix = [0u8; 2];
    if walk.at + 2 > walk.end
        // SAFETY: a two-byte read from the frame into a local.
        || unsafe { bpf_xdp_load_bytes(walk.ctx, walk.at, prefix.as_mut_ptr().cast(), 2) } != 0
    {
        walk.cut = true;
        return 1;
    }
    walk.messages = index as u32 + 1;
    walk.at += 2 + u32::from(u16::from_be_bytes(prefix));
    0
}
