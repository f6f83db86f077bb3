//! Test and benchmark programs, apart from the production object (`dns-xdp-ebpf`), built
//! for the test kit: a bare `XDP_PASS` (the cost of running any XDP program at all, the
//! micro-benchmark's baseline) and the flood generators of the lab and the benchmarks.
//!
//! They are run with BPF_PROG_TEST_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`)
//! on an IPv4/UDP DNS query template whose UDP checksum is 0: each run gets a fresh copy
//! of the template (or the same page again, as this program left it), the program picks a
//! source address and returns `XDP_TX`, and the kernel transmits the frame out of the
//! interface named by the context's `ingress_ifindex` (a veth: it arrives at the peer).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_get_prandom_u32, macros::xdp, programs::XdpContext,
};

/// Ethernet (14) + IPv4 header without options (20) + UDP source port: the bytes these
/// programs touch.
const HEADERS: usize = 36;
/// Offset of the IPv4 header checksum in the frame.
const IP_CHECKSUM: usize = 14 + 10;
/// Offset of the low 16 bits of the IPv4 source address.
const SOURCE_LOW: usize = 14 + 12 + 2;
/// Offset of the UDP source port (the template's IPv4 header has no options).
const SOURCE_PORT: usize = 34;

/// Replaces the 16-bit word at `SOURCE_LOW` by `new` and patches the IPv4 header checksum
/// incrementally (RFC 1624: HC' = ~(~HC + ~m + m')); works in any byte order as long as
/// all three words are read the same way. The UDP source port becomes `port` (the UDP
/// checksum is 0: nothing to patch), so every frame is a new flow for conntrack.
#[inline(always)]
fn set_source(ctx: &XdpContext, new: u16, port: u16) -> u32 {
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let checksum = (start + IP_CHECKSUM) as *mut u16;
    let source = (start + SOURCE_LOW) as *mut u16;
    let source_port = (start + SOURCE_PORT) as *mut u16;
    // SAFETY: the three words lie within [data, data + HEADERS), checked against data_end.
    unsafe {
        // Network order: 1024 or more, as the packet-socket sender makes it.
        source_port.write_unaligned((port | 1024).to_be());
        let old = source.read_unaligned();
        let mut sum = u32::from(!checksum.read_unaligned()) + u32::from(!old) + u32::from(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        source.write_unaligned(new);
        checksum.write_unaligned(!(sum as u16));
    }
    xdp_action::XDP_TX
}

/// A distributed spoofed flood: the low 16 bits of the source address are random, so a
/// template from a.b.0.0 comes from up to 65 536 sources of a.b.0.0/16 (and random
/// source ports).
#[xdp]
pub fn flood_spoofed(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    set_source(&ctx, random as u16, (random >> 16) as u16)
}

/// A concentrated flood: four sources (the template's address with its last octet
/// replaced by 1 to 4), random source ports.
#[xdp]
pub fn flood_few(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: within the bounds checked above.
    let third = unsafe { *((start + SOURCE_LOW) as *const u8) };
    // The word as it sits in memory: its first byte is the third octet.
    let word = u16::from_ne_bytes([third, (random & 3) as u8 + 1]);
    set_source(&ctx, word, (random >> 16) as u16)
}

/// Offset of the IPv4 source address in the frame.
const SOURCE: usize = 14 + 12;
/// Offset of the IPv4 destination address in the frame.
const DESTINATION: usize = 14 + 16;

/// A flood from the whole IPv4 unicast space: every frame's source is a random address
/// with a first octet from 1–126 or 128–223 (never 0/8, 127/8 or 224/3), outside the
/// destination's /24 (the server's own network), and a random source port. No prefix
/// (a /24, a /16, even a /8) receives more than a sliver of it. The user-space sender
/// (`dns_xdp_testkit::flood::random_source`) picks sources the same way.
#[xdp]
pub fn flood_random(ctx: XdpContext) -> u32 {
    // SAFETY: helpers without arguments.
    let (low, high) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // 1..=222 uniformly (multiply-shift), then 127 and above moved up by one.
    let mut first = 1 + ((u64::from(high) * 222) >> 32) as u8;
    if first >= 127 {
        first += 1;
    }
    let mut octets = [first, low as u8, (low >> 8) as u8, (low >> 16) as u8];
    let checksum = (start + IP_CHECKSUM) as *mut u16;
    let words = [
        (start + SOURCE) as *mut u16,
        (start + SOURCE + 2) as *mut u16,
    ];
    let source_port = (start + SOURCE_PORT) as *mut u16;
    // SAFETY: every access lies within [data, data + HEADERS), checked against data_end.
    unsafe {
        let destination = (start + DESTINATION) as *const u8;
        if octets[0] == *destination
            && octets[1] == *destination.add(1)
            && octets[2] == *destination.add(2)
        {
            octets[2] ^= 1;
        }
        source_port.write_unaligned((high as u16 | 1024).to_be());
        // RFC 1624 over both words of the address: HC' = ~(~HC + ~m0 + m0' + ~m1 + m1').
        let new = [
            u16::from_ne_bytes([octets[0], octets[1]]),
            u16::from_ne_bytes([octets[2], octets[3]]),
        ];
        let mut sum = u32::from(!checksum.read_unaligned());
        for (word, new) in words.into_iter().zip(new) {
            sum += u32::from(!word.read_unaligned()) + u32::from(new);
            word.write_unaligned(new);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        checksum.write_unaligned(!(sum as u16));
    }
    xdp_action::XDP_TX
}

/// The cost of running any XDP program at all: the micro-benchmark's baseline.
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
