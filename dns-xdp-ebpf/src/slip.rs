//! Slip: answer a rate-limited UDP query with a truncated reply built from the query
//! itself (same ID and question, QR=1, TC=1, no records), sent back with XDP_TX. A real
//! client retries over TCP, where a spoofed source cannot follow. The reply is the
//! query's headers and question, so it is never larger than the query: no amplification.
//!
//! IPv4 only for now: over IPv6 the reply needs a UDP checksum over the whole message,
//! a loop the verifier cannot afford beside the buckets (it exceeds the 1M-instruction
//! budget); IPv6 queries are dropped instead.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use dns_xdp_common::{DNS_HEADER_LEN, fold_checksum};

use crate::parse::{Frame, Transport};

/// Labels walked in a question name: enough for an ip6.arpa name (34); a query with a
/// longer name is dropped instead of slipped.
const MAX_LABELS: usize = 40;

/// Rewrites the query `transport` describes into its truncated reply and trims the
/// frame. `None` when the query cannot be answered this way (then it is dropped).
#[inline(always)]
pub fn truncated_reply(ctx: &XdpContext, transport: &Transport) -> Option<()> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let dns = transport.payload;
    let reply_len = question_end(&frame, dns, transport.payload_len)? - dns;
    let udp = dns - 8;
    let l3 = transport.l3;
    if transport.ipv6 {
        // Over IPv6 the reply needs a UDP checksum over the whole message, a loop the
        // verifier cannot afford beside the buckets: IPv6 queries are dropped, not slipped.
        return None;
    }

    // Each header is bounds-checked once as a whole and edited at constant offsets:
    // the verifier follows that, not pointers the compiler derives backwards.
    let eth = header::<12>(&frame, 0)?;
    swap(eth, 0, 6, 6);
    let ip = header::<20>(&frame, l3)?;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    ip[2..4].copy_from_slice(&((header_len + 8 + reply_len) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0]); // DF, no fragment
    ip[8] = 64; // TTL
    ip[10..12].copy_from_slice(&[0, 0]);
    swap(ip, 12, 16, 4);
    let checksum = ipv4_header_checksum(&frame, l3, header_len)?;
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    // The UDP header and the DNS header after it, as one span.
    let l4 = header::<{ 8 + DNS_HEADER_LEN }>(&frame, udp)?;
    swap(l4, 0, 2, 2);
    l4[4..6].copy_from_slice(&((8 + reply_len) as u16).to_be_bytes());
    l4[6..8].copy_from_slice(&[0, 0]);
    // DNS: QR=1 and TC=1 (RD kept), RA/Z/AD/CD and RCODE cleared, no records.
    l4[8 + 2] = (l4[8 + 2] & 0x79) | 0x82;
    l4[8 + 3] = 0;
    l4[8 + 6..8 + 12].copy_from_slice(&[0; 6]);

    // The frame's length as a number (the verifier forbids arithmetic on its end pointer).
    // SAFETY: a helper call on our own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    let delta = (dns + reply_len) as i64 - frame_len;
    // SAFETY: shrinking the frame we were given; no pointer into it is used after.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return None;
    }
    Some(())
}

/// Where the question (name, type, class) after the DNS header at `dns` ends.
#[inline(always)]
fn question_end(frame: &Frame, dns: usize, len: usize) -> Option<usize> {
    let start = dns + DNS_HEADER_LEN;
    let mut at = start;
    for _ in 0..MAX_LABELS {
        // Two-byte reads: the verifier cannot bound a one-byte one; a label or the
        // terminator is always followed by at least one more byte of the question.
        let label = (read_be16(frame, at)? >> 8) as usize;
        if label == 0 {
            let end = at + 1 + 4;
            return (end <= dns + len).then_some(end);
        }
        // A compression pointer or a reserved label type has no place in a query.
        if label > 63 || at + 1 + label - start > 255 {
            return None;
        }
        at += 1 + label;
    }
    None
}

/// The `N` bytes at `offset`, bounds-checked, writable (XDP frames are).
#[inline(always)]
fn header<const N: usize>(frame: &Frame, offset: usize) -> Option<&'static mut [u8; N]> {
    let at: *const [u8; N] = frame.ptr_at(offset).ok()?;
    // SAFETY: in bounds (checked); the frame is the program's to write until it returns.
    Some(unsafe { &mut *at.cast_mut() })
}

/// Swaps `len` bytes at `a` with `len` bytes at `b` (source and destination fields).
#[inline(always)]
fn swap<const N: usize>(bytes: &mut [u8; N], a: usize, b: usize, len: usize) {
    for index in 0..len {
        bytes.swap(a + index, b + index);
    }
}

#[inline(always)]
fn read_be16(frame: &Frame, offset: usize) -> Option<u32> {
    let at: *const [u8; 2] = frame.ptr_at(offset).ok()?;
    Some(u32::from(u16::from_be_bytes(unsafe { *at })))
}

/// RFC 1071 over the IPv4 header (checksum field zeroed by the caller).
#[inline(always)]
fn ipv4_header_checksum(frame: &Frame, l3: usize, header_len: usize) -> Option<u16> {
    let mut sum = 0u64;
    for word in 0..30 {
        if word * 2 >= header_len {
            break;
        }
        sum += u64::from(read_be16(frame, l3 + word * 2)?);
    }
    Some(fold_checksum(sum))
}
