//! TCP to a DNS port: the state the programs keep per connection the server accepted,
//! and the rules that charge each query of its byte stream (RFC 7766 framing: every
//! message behind a 2-byte length) to the client's buckets, one token per message.
//!
//! XDP sees segments before the stack decides what to keep of them, so the count is
//! exact only where XDP's view provably is the stack's: a segment that continues the
//! data passed so far, all of which the server has acknowledged. Everything else is
//! charged at the worst case of one message per `MIN_TCP_MESSAGE` bytes; a segment
//! that skips data is dropped until the gap is filled. See docs/ARCHITECTURE.md ("TCP").

use bytemuck::{Pod, Zeroable};

/// The shortest DNS message a server answers over TCP: its 2-byte length and a 12-byte
/// header. No segment carries more queries than its length over this.
pub const MIN_TCP_MESSAGE: u32 = 14;

/// Length prefixes read in one segment (`bpf_loop` steps): a 1500-byte frame holds at
/// most 104 messages. A segment with more is charged at the worst case.
pub const MAX_SEGMENT_MESSAGES: u32 = 128;

/// The most one segment is ever charged: the worst case of a 64 KiB payload. A bucket
/// charged this much in one go may run that far into debt (`gcra_charge`).
pub const MAX_SEGMENT_COST: u64 = 65_535u64.div_ceil(MIN_TCP_MESSAGE as u64);

/// `TcpStream.flags`: the message boundaries are no longer known (the stack may have
/// kept other bytes than XDP walked); every later segment is charged at the worst case.
pub const STREAM_DESYNCED: u32 = 1;

/// Whether sequence number `a` comes before `b` (RFC 793 arithmetic, modulo 2^32).
#[inline(always)]
pub const fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Whether `seq` lies in `[low, high]`, modulo 2^32.
#[inline(always)]
pub const fn seq_within(seq: u32, low: u32, high: u32) -> bool {
    seq.wrapping_sub(low) <= high.wrapping_sub(low)
}

/// The later of two sequence numbers.
#[inline(always)]
pub const fn seq_latest(a: u32, b: u32) -> u32 {
    if seq_before(a, b) { b } else { a }
}

/// The most queries `bytes` of a stream can hold.
#[inline(always)]
pub const fn worst_case_messages(bytes: u32) -> u32 {
    bytes.div_ceil(MIN_TCP_MESSAGE)
}

/// What XDP knows of a client's byte stream on one connection; written by `dns_xdp`
/// only (the egress program seeds it from the SYN-ACK).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct TcpStream {
    /// The sequence number after the last data XDP passed.
    pub end: u32,
    /// Where the next message's length prefix starts (may lie beyond `end`: a message
    /// that continues in later segments).
    pub next_message: u32,
    /// `STREAM_DESYNCED`, or 0.
    pub flags: u32,
}

/// What to do with a data segment of `len` bytes at sequence number `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentPlan {
    /// The server has acknowledged all of it: a retransmission the stack discards. It
    /// passes free (its ACK may be what the peer needs).
    Duplicate,
    /// It starts beyond the data passed so far (a segment before it was lost or
    /// dropped): dropped; the peer sends it again after the missing one.
    Gap,
    /// Read its length prefixes from `offset` into its payload (at or beyond its end:
    /// the segment lies inside one message), then `finish_walk`.
    Walk { offset: u32 },
    /// Charge `messages`; the stream is then `next`.
    Charge { messages: u32, next: TcpStream },
}

/// The plan for a data segment, from the stream as XDP left it and `acked`, how far the
/// server has acknowledged the client's stream.
#[inline(always)]
pub const fn plan_segment(stream: &TcpStream, acked: u32, seq: u32, len: u32) -> SegmentPlan {
    let end = seq.wrapping_add(len);
    if !seq_before(acked, end) {
        return SegmentPlan::Duplicate;
    }
    if stream.flags & STREAM_DESYNCED == 0 && seq == stream.end {
        return SegmentPlan::Walk {
            offset: stream.next_message.wrapping_sub(seq),
        };
    }
    if stream.flags & STREAM_DESYNCED == 0 && seq_before(stream.end, seq) {
        return SegmentPlan::Gap;
    }
    // Bytes XDP passed before but the stack may not have kept (the server has not
    // acknowledged them), or any segment once the boundaries are lost: every new byte
    // may start a message.
    let new_from = if seq_before(seq, acked) { acked } else { seq };
    SegmentPlan::Charge {
        messages: worst_case_messages(end.wrapping_sub(new_from)),
        next: TcpStream {
            end: seq_latest(stream.end, end),
            next_message: stream.next_message,
            flags: STREAM_DESYNCED,
        },
    }
}

/// What reading a segment's length prefixes found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    /// Length prefixes that start in the segment.
    pub messages: u32,
    /// Where the message after the last of them starts, from the payload's start.
    pub next_offset: u32,
    /// False if a prefix was cut by the segment's end, or `MAX_SEGMENT_MESSAGES` were
    /// read before the end.
    pub complete: bool,
}

/// The charge for a walked in-order segment and the stream after it. The count is exact
/// when the server has acknowledged everything before the segment (the stack then holds
/// exactly the bytes XDP walked); else the segment is charged at the worst case, and the
/// count stands for the next one.
#[inline(always)]
pub const fn finish_walk(
    stream: &TcpStream,
    acked: u32,
    seq: u32,
    len: u32,
    walked: Walked,
) -> (u32, TcpStream) {
    let end = seq.wrapping_add(len);
    if !walked.complete {
        let next = TcpStream {
            end,
            next_message: stream.next_message,
            flags: STREAM_DESYNCED,
        };
        return (worst_case_messages(len), next);
    }
    let messages = if acked == stream.end {
        walked.messages
    } else {
        worst_case_messages(len)
    };
    let next = TcpStream {
        end,
        next_message: seq.wrapping_add(walked.next_offset),
        flags: 0,
    };
    (messages, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN: u32 = u32::MAX - 40; // the stream wraps around 2^32 below

    fn fresh() -> TcpStream {
        TcpStream {
            end: ISN,
            next_message: ISN,
            flags: 0,
        }
    }

    fn walked(messages: u32, next_offset: u32) -> Walked {
        Walked {
            messages,
            next_offset,
            complete: true,
        }
    }

    #[test]
    fn sequence_arithmetic_wraps() {
        assert!(seq_before(u32::MAX, 0));
        assert!(!seq_before(0, u32::MAX));
        assert!(seq_within(2, u32::MAX - 1, 5));
        assert!(!seq_within(6, u32::MAX - 1, 5));
        assert_eq!(seq_latest(u32::MAX, 3), 3);
        assert_eq!(worst_case_messages(0), 0);
        assert_eq!(worst_case_messages(14), 1);
        assert_eq!(worst_case_messages(15), 2);
    }

    #[test]
    fn acknowledged_in_order_segments_are_charged_their_messages_exactly() {
        let stream = fresh();
        // Three queries of 40 bytes (prefix included), then half of a fourth.
        assert_eq!(
            plan_segment(&stream, ISN, ISN, 140),
            SegmentPlan::Walk { offset: 0 }
        );
        let (messages, stream) = finish_walk(&stream, ISN, ISN, 140, walked(4, 160));
        assert_eq!(messages, 4);
        assert_eq!(stream.end, ISN.wrapping_add(140));
        // The rest of the fourth, acknowledged: the walk starts 20 bytes in.
        let seq = stream.end;
        assert_eq!(
            plan_segment(&stream, seq, seq, 60),
            SegmentPlan::Walk { offset: 20 }
        );
        let (messages, _) = finish_walk(&stream, seq, seq, 60, walked(1, 60));
        assert_eq!(messages, 1);
        // A segment wholly inside a message: nothing to charge.
        let long = TcpStream {
            next_message: seq.wrapping_add(500),
            ..stream
        };
        assert_eq!(
            plan_segment(&long, seq, seq, 60),
            SegmentPlan::Walk { offset: 500 }
        );
    }

    #[test]
    fn an_in_order_segment_after_unacknowledged_data_is_charged_the_worst_case() {
        let (_, stream) = finish_walk(&fresh(), ISN, ISN, 40, walked(1, 40));
        let seq = stream.end;
        // The server has not acknowledged the first 40 bytes yet: the stack may have
        // dropped them, and the boundaries XDP computed may not be the server's.
        let (messages, next) = finish_walk(&stream, ISN, seq, 140, walked(1, 140));
        assert_eq!(messages, worst_case_messages(140));
        assert_eq!(next.flags, 0, "the boundaries stand once acknowledged");
    }

    #[test]
    fn retransmissions_and_gaps() {
        let (_, stream) = finish_walk(&fresh(), ISN, ISN, 100, walked(2, 100));
        let acked = ISN.wrapping_add(60);
        // Wholly acknowledged: the stack discards it.
        assert_eq!(
            plan_segment(&stream, acked, ISN, 60),
            SegmentPlan::Duplicate
        );
        // Partly unacknowledged: its unacknowledged 40 bytes at the worst case, and the
        // boundaries are lost from then on.
        let SegmentPlan::Charge { messages, next } = plan_segment(&stream, acked, ISN, 100) else {
            panic!("charged");
        };
        assert_eq!(messages, worst_case_messages(40));
        assert_eq!(next.flags, STREAM_DESYNCED);
        assert_eq!(next.end, stream.end);
        let seq = next.end;
        assert_eq!(
            plan_segment(&next, seq, seq, 28),
            SegmentPlan::Charge {
                messages: 2,
                next: TcpStream {
                    end: seq.wrapping_add(28),
                    ..next
                }
            }
        );
        // Beyond the data passed: dropped.
        assert_eq!(
            plan_segment(&stream, acked, stream.end.wrapping_add(1), 10),
            SegmentPlan::Gap
        );
    }

    #[test]
    fn a_cut_or_overlong_walk_loses_the_boundaries() {
        let cut = Walked {
            messages: 3,
            next_offset: 99,
            complete: false,
        };
        let (messages, next) = finish_walk(&fresh(), ISN, ISN, 100, cut);
        assert_eq!(messages, worst_case_messages(100));
        assert_eq!(next.flags, STREAM_DESYNCED);
        assert_eq!(next.end, ISN.wrapping_add(100));
    }
}
