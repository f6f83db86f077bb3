//! Slip: answer a rate-limited UDP query with a truncated reply built from the query
//! itself (same ID and question, QR=1, TC=1, no records), sent back with XDP_TX. A real
//! client retries over TCP, where a spoofed source cannot follow. The reply is the
//! query's headers and question, so it is never larger than the query: no amplification.
//!
//! The variable-length parts (walking the question name, the UDP checksum over the
//! message) go through helpers and a `bpf_loop` step verified once, not loops over
//! packet pointers: those would be walked again for every header layout the parser
//! leaves, which the verifier's budget cannot afford.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use dns_xdp_common::{DNS_HEADER_LEN, FAMILY_V6, Family, NAME_COMPLETE, fold_checksum};

use crate::{
    maps::{SCRATCH, config},
    parse::{Frame, IPPROTO_UDP, Transport},
    policy::{Source, within_slip_caps},
    proof::load_source,
    question::scan_name,
};

/// The longest reply message: header, a name of at most 255 bytes and its terminator,
/// type and class.
const MAX_REPLY_LEN: usize = DNS_HEADER_LEN + 256 + 4;
/// The UDP pseudo-header as summed here: 32 address bytes (IPv4's 8, then zeros), then
/// zero, protocol and UDP length. Sums the same as either family's pseudo-header.
const PSEUDO_LEN: usize = 36;
const UDP_HEADER_LEN: usize = 8;
/// The checksum scratch's size: pseudo-header, UDP header, the longest reply, padding
/// (the `SCRATCH` map's value, as the map list in dns-xdp-common gives it).
const SCRATCH_LEN: usize = PSEUDO_LEN + UDP_HEADER_LEN + MAX_REPLY_LEN + 4;
const _: () = assert!(SCRATCH_LEN == dns_xdp_common::maps::SLIP_SCRATCH_LEN);

/// Field offsets in the headers a reply rewrites.
const ETH_DESTINATION: usize = 0;
const ETH_SOURCE: usize = 6;
const ETH_ADDRESS_LEN: usize = 6;
const IPV4_HEADER_LEN: usize = 20;
const IPV4_TOTAL_LEN: usize = 2;
const IPV4_FLAGS_FRAGMENT: usize = 6;
const IPV4_TTL: usize = 8;
const IPV4_PROTOCOL: usize = 9;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SOURCE: usize = 12;
const IPV4_DESTINATION: usize = 16;
const IPV4_ADDRESS_LEN: usize = 4;
const IPV6_HEADER_LEN: usize = 40;
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_NEXT_HEADER: usize = 6;
const IPV6_HOP_LIMIT: usize = 7;
const IPV6_SOURCE: usize = 8;
const IPV6_DESTINATION: usize = 24;
const IPV6_ADDRESS_LEN: usize = 16;
const UDP_SOURCE_PORT: usize = 0;
const UDP_DESTINATION_PORT: usize = 2;
const UDP_LENGTH: usize = 4;
const UDP_CHECKSUM: usize = 6;
/// In the DNS header: the flags (QR, opcode, AA, TC, RD; then RA, Z, AD, CD, RCODE) and
/// the answer, authority and additional counts.
const DNS_FLAGS: usize = 2;
const DNS_RECORD_COUNTS: usize = 6;
/// IPv4's DF flag (no fragment offset), in the flags-and-offset field.
const IPV4_DONT_FRAGMENT: [u8; 2] = [0x40, 0];
/// The reply's TTL / hop limit.
const REPLY_TTL: u8 = 64;

/// `slip_query`: a slip cap was spent; the query is to be dropped.
pub(crate) const SLIP_CAPPED: u64 = 0;
/// `slip_query`: the frame is now the truncated reply, to be sent back (XDP_TX).
pub(crate) const SLIP_SENT: u64 = 1;
/// `slip_query`: the query cannot be answered this way (`truncated_reply`): dropped.
pub(crate) const SLIP_UNFIT: u64 = 2;

/// Slips the refused UDP query `transport` describes: `slip_query` on its offsets.
#[inline(always)]
pub(crate) fn slip(ctx: &XdpContext, transport: &Transport) -> u64 {
    slip_query(
        ctx.ctx,
        (transport.l3 as u64 & 0xffff) << 8 | u64::from(transport.family.code()),
        (transport.payload as u64 & 0xffff) << 16 | (transport.payload_len as u64 & 0xffff),
    )
}

/// Spends one slipped reply from the caps (`within_slip_caps`) and rewrites the query
/// whose IP header is at frame offset `l3` (packed as `l3 << 8 | family`) and whose DNS
/// message is the `len` bytes at frame offset `dns` (packed as `dns << 16 | len`) into
/// its truncated reply: `SLIP_*`. A global function (its own BTF linkage): verified once,
/// on its own, whatever its callers' states (a query refused by a level and one shed by
/// the budget come here with many).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn slip_query(ctx: *mut xdp_md, l3_family: u64, dns_len: u64) -> u64 {
    let (l3, family) = ((l3_family >> 8) as u32 & 0xffff, l3_family as u8);
    let (dns, len) = ((dns_len >> 16) as usize & 0xffff, dns_len as usize & 0xffff);
    let Ok(config) = config() else {
        return SLIP_UNFIT;
    };
    let mut words = [0u64; 2];
    if !load_source(ctx, l3, family, &mut words) {
        return SLIP_UNFIT;
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&words[0].to_le_bytes());
    addr[8..].copy_from_slice(&words[1].to_le_bytes());
    let (source, family) = if family == FAMILY_V6 {
        (Source::V6(addr), Family::V6)
    } else {
        (Source::V4([addr[0], addr[1], addr[2], addr[3]]), Family::V4)
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_slip_caps(&source, now, config) {
        return SLIP_CAPPED;
    }
    match truncated_reply(&XdpContext::new(ctx), l3 as usize, family, dns, len) {
        Some(()) => SLIP_SENT,
        None => SLIP_UNFIT,
    }
}

/// Rewrites the UDP query whose IP header (of `family`) is at `l3` and whose DNS
/// message is the `len` bytes at `dns` into its truncated reply, and trims the frame.
/// `None` when the query cannot be answered this way (then it is dropped): a name too
/// long or malformed, or IPv6 extension headers (which a reply would have to mirror).
#[inline(always)]
fn truncated_reply(
    ctx: &XdpContext,
    l3: usize,
    family: Family,
    dns: usize,
    len: usize,
) -> Option<()> {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let reply_len = question_end(ctx, dns, len)? - dns;
    if reply_len > MAX_REPLY_LEN {
        return None;
    }
    let udp = dns.checked_sub(UDP_HEADER_LEN)?;
    let udp_len = UDP_HEADER_LEN + reply_len;

    // Each header is bounds-checked once as a whole and edited at constant offsets:
    // the verifier follows that, not pointers the compiler derives backwards.
    let addresses = if family == Family::V6 {
        let ip = header::<IPV6_HEADER_LEN>(&frame, l3)?;
        if ip[IPV6_NEXT_HEADER] != IPPROTO_UDP || udp != l3 + IPV6_HEADER_LEN {
            return None;
        }
        ip[IPV6_PAYLOAD_LEN..IPV6_PAYLOAD_LEN + 2].copy_from_slice(&(udp_len as u16).to_be_bytes());
        ip[IPV6_HOP_LIMIT] = REPLY_TTL;
        swap(ip, IPV6_SOURCE, IPV6_DESTINATION, IPV6_ADDRESS_LEN);
        (l3 + IPV6_SOURCE, 2 * IPV6_ADDRESS_LEN)
    } else {
        let ip = header::<IPV4_HEADER_LEN>(&frame, l3)?;
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        // Options or an authentication header would have to be mirrored or re-signed:
        // such a query is dropped, never slipped.
        if header_len != IPV4_HEADER_LEN || ip[IPV4_PROTOCOL] != IPPROTO_UDP {
            return None;
        }
        ip[IPV4_TOTAL_LEN..IPV4_TOTAL_LEN + 2]
            .copy_from_slice(&((header_len + udp_len) as u16).to_be_bytes());
        ip[IPV4_FLAGS_FRAGMENT..IPV4_FLAGS_FRAGMENT + 2].copy_from_slice(&IPV4_DONT_FRAGMENT);
        ip[IPV4_TTL] = REPLY_TTL;
        ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&[0, 0]);
        swap(ip, IPV4_SOURCE, IPV4_DESTINATION, IPV4_ADDRESS_LEN);
        let checksum = ipv4_header_checksum(ip);
        ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&checksum.to_be_bytes());
        (l3 + IPV4_SOURCE, 2 * IPV4_ADDRESS_LEN)
    };
    let eth = header::<{ 2 * ETH_ADDRESS_LEN }>(&frame, 0)?;
    swap(eth, ETH_DESTINATION, ETH_SOURCE, ETH_ADDRESS_LEN);
    // The UDP header and the DNS header after it, as one span.
    let l4 = header::<{ UDP_HEADER_LEN + DNS_HEADER_LEN }>(&frame, udp)?;
    swap(l4, UDP_SOURCE_PORT, UDP_DESTINATION_PORT, 2);
    l4[UDP_LENGTH..UDP_LENGTH + 2].copy_from_slice(&(udp_len as u16).to_be_bytes());
    l4[UDP_CHECKSUM..UDP_CHECKSUM + 2].copy_from_slice(&[0, 0]);
    // DNS: QR=1 and TC=1 (RD kept), RA/Z/AD/CD and RCODE cleared, no records.
    let dns_header = UDP_HEADER_LEN;
    l4[dns_header + DNS_FLAGS] = (l4[dns_header + DNS_FLAGS] & 0x79) | 0x82;
    l4[dns_header + DNS_FLAGS + 1] = 0;
    l4[dns_header + DNS_RECORD_COUNTS..dns_header + DNS_HEADER_LEN].copy_from_slice(&[0; 6]);

    // The frame's length as a number (the verifier forbids arithmetic on its end pointer).
    // SAFETY: a helper call on our own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    let delta = (dns + reply_len) as i64 - frame_len;
    // SAFETY: shrinking the frame we were given; no pointer into it is used after.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return None;
    }
    let checksum = udp_checksum(ctx.ctx, addresses, udp, udp_len)?;
    // SAFETY: two bytes inside the trimmed frame (the UDP checksum field).
    let stored = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            (udp + UDP_CHECKSUM) as u32,
            core::ptr::from_ref(&checksum).cast_mut().cast(),
            2,
        )
    };
    (stored == 0).then_some(())
}

/// The UDP checksum (in memory order, ready to store) of the datagram of `udp_len`
/// bytes at `udp` whose addresses are the `addresses` (offset, length) span.
#[inline(always)]
fn udp_checksum(
    ctx: *mut xdp_md,
    (addresses, addresses_len): (usize, usize),
    udp: usize,
    udp_len: usize,
) -> Option<[u8; 2]> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch; XDP programs do not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    if addresses_len > 32 || udp_len > UDP_HEADER_LEN + MAX_REPLY_LEN || udp_len == 0 {
        return None;
    }
    scratch[..32].fill(0);
    // Zero the word the message ends in: the padding must not add to the sum.
    let padded = (udp_len + 3) & !3;
    let tail = PSEUDO_LEN + padded - 4;
    scratch.get_mut(tail..tail + 4)?.fill(0);
    let [len_high, len_low] = (udp_len as u16).to_be_bytes();
    scratch[32..PSEUDO_LEN].copy_from_slice(&[0, IPPROTO_UDP, len_high, len_low]);
    // SAFETY: helper reads from our frame into bounded spans of the scratch buffer.
    unsafe {
        if bpf_xdp_load_bytes(
            ctx,
            addresses as u32,
            scratch.as_mut_ptr().cast(),
            addresses_len as u32,
        ) != 0
            || bpf_xdp_load_bytes(
                ctx,
                udp as u32,
                scratch.as_mut_ptr().add(PSEUDO_LEN).cast(),
                udp_len as u32,
            ) != 0
        {
            return None;
        }
    }
    // SAFETY: sums `PSEUDO_LEN + padded` bytes of the scratch buffer (a multiple of 4).
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            scratch.as_mut_ptr().cast(),
            (PSEUDO_LEN + padded) as u32,
            0,
        )
    };
    if sum < 0 {
        return None;
    }
    // The sum is of little-endian words read from memory: stored back the same way,
    // its bytes are the network-order checksum. 0 means "no checksum": send 0xffff.
    let checksum = match fold_checksum(sum as u64 & 0xffff_ffff) {
        0 => 0xffff,
        checksum => checksum,
    };
    Some(checksum.to_ne_bytes())
}

/// Where the question (name, type, class) after the DNS header at `dns` ends, if its
/// name is whole and its type and class follow within the `len` bytes of the message.
#[inline(always)]
fn question_end(ctx: &XdpContext, dns: usize, len: usize) -> Option<usize> {
    let scan = scan_name(ctx, dns + DNS_HEADER_LEN, dns + len);
    let end = scan.name_end + 4;
    (scan.status == NAME_COMPLETE && end <= dns + len).then_some(end)
}

/// The `N` bytes at `offset`, bounds-checked, writable (XDP frames are).
#[inline(always)]
fn header<const N: usize>(frame: &Frame, offset: usize) -> Option<&'static mut [u8; N]> {
    let at: *const [u8; N] = frame.header(offset).ok()?;
    // SAFETY: in bounds (`Frame::header` checked); an XDP frame is the program's to
    // write until it returns, and nothing else reads these bytes meanwhile.
    Some(unsafe { &mut *at.cast_mut() })
}

/// Swaps `len` bytes at `a` with `len` bytes at `b` (source and destination fields).
#[inline(always)]
fn swap<const N: usize>(bytes: &mut [u8; N], a: usize, b: usize, len: usize) {
    for index in 0..len {
        bytes.swap(a + index, b + index);
    }
}

/// RFC 1071 over an IPv4 header without options (checksum field zeroed by the caller).
#[inline(always)]
fn ipv4_header_checksum(header: &[u8; IPV4_HEADER_LEN]) -> u16 {
    let mut sum = 0u64;
    for word in header.chunks_exact(2) {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    fold_checksum(sum)
}
