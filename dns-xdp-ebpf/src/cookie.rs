//! DNS cookies in queries (RFC 7873, RFC 9018): a UDP query carrying a server cookie
//! that one of the configured secrets (the DNS server's own) made for its source, within
//! the timestamp window, comes from a client that received an answer from this server at
//! that address: not spoofed. The policy exempts it from the prefix levels and the
//! source is proven (`proof`). The rules and the arithmetic are
//! `dns_xdp_common::cookies`'; this module reads the query.

use crate::maps::{COOKIE_SCRATCH, COUNTERS, config};
use crate::proof::{load_source, record_proof};
use aya_ebpf::bindings::xdp_md;
use aya_ebpf::helpers::{bpf_ktime_get_tai_ns, bpf_xdp_load_bytes};
use aya_ebpf::programs::XdpContext;
use dns_xdp_common::maps::COOKIE_SCRATCH_LEN;
use dns_xdp_common::{
    CLIENT_COOKIE_LEN, COOKIE_INVALID, COOKIE_NONE, COOKIE_STALE, COOKIE_VALID, COOKIE_VERSION,
    Counter, DNS_HEADER_LEN, FAMILY_V4, FAMILY_V6, FULL_COOKIE_LEN, MAX_OPTIONS, NAME_COMPLETE,
    OPTION_COOKIE, TYPE_OPT, cookie_fresh, cookie_hash,
};

/// `cookie_find`'s result when the query carries an RFC 9018 server cookie, left in
/// `COOKIE_SCRATCH` for `cookie_verify`.
pub(crate) const COOKIE_DUE: u64 = 0xff;

/// Finds the COOKIE option of the UDP query whose DNS message is the `len` bytes at
/// frame offset `dns` (packed as `dns << 16 | len`), whose IP header is at frame offset
/// `l3` (packed as `l3 << 8 | family`). Returns `COOKIE_NONE` or `COOKIE_INVALID` when
/// that settles it (counted), or `COOKIE_DUE` with the cookie and the source address
/// in `COOKIE_SCRATCH`. The check is two global functions (their own BTF linkage,
/// each verified once on its own, whatever the states of its callers), called one
/// after the other by the policy: nested, their stack frames and the program's would
/// exceed the verifier's 512 bytes.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cookie_find(ctx: *mut xdp_md, dns_len: u64, l3_family: u64) -> u64 {
    let outcome = find(ctx, dns_len, l3_family);
    if outcome != COOKIE_DUE {
        bump_cookie(outcome as u8);
    }
    outcome
}

#[inline(always)]
fn find(ctx: *mut xdp_md, dns_len: u64, l3_family: u64) -> u64 {
    let none = u64::from(COOKIE_NONE);
    let Some(scratch) = scratch() else {
        return none;
    };
    let (dns, len) = ((dns_len >> 16) as u32 & 0xffff, dns_len as u32 & 0xffff);
    let (l3, family) = ((l3_family >> 8) as u32 & 0xffff, l3_family as u8);
    scratch.v6 = u64::from(family == FAMILY_V6);
    if !load_source(ctx, l3, family, &mut scratch.addr) {
        return none;
    }
    let end = dns + len;
    let scan = crate::question::scan_name(
        &XdpContext::new(ctx),
        (dns as usize) + DNS_HEADER_LEN,
        end as usize,
    );
    if scan.status != NAME_COMPLETE {
        return none;
    }
    // A query: one question, no answers or authority; the OPT record is the first
    // additional record, as every client sends it.
    let header = &mut scratch.header;
    if !load(ctx, dns, header) || header[6..10] != [0; 4] || header[10..12] == [0; 2] {
        return none;
    }
    // The OPT record follows the question's type and class: root name, type, class
    // (the payload size), TTL, data length.
    let opt_at = (scan.name_end + 4) as u32;
    let opt = &mut scratch.opt;
    if !load(ctx, opt_at, opt) || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT {
        return none;
    }
    let options_end = opt_at + 11 + u32::from(u16::from_be_bytes([opt[9], opt[10]]));
    if options_end > end {
        return none;
    }
    let mut at = opt_at + 11;
    let mut found = None;
    for _ in 0..MAX_OPTIONS {
        let option = &mut scratch.option;
        if at + 4 > options_end || !load(ctx, at, option) {
            break;
        }
        let len = u32::from(u16::from_be_bytes([option[2], option[3]]));
        if u16::from_be_bytes([option[0], option[1]]) == OPTION_COOKIE {
            found = Some((at + 4, len));
            break;
        }
        at += 4 + len;
    }
    let Some((at, len)) = found else {
        return none;
    };
    if len as usize == CLIENT_COOKIE_LEN {
        return none;
    }
    let cookie = &mut scratch.cookie;
    if len as usize != FULL_COOKIE_LEN
        || at + len > options_end
        || !load(ctx, at, cookie)
        || cookie[8] != COOKIE_VERSION
    {
        // Not an RFC 9018 server cookie: none this server made.
        return u64::from(COOKIE_INVALID);
    }
    COOKIE_DUE
}

/// Verifies the server cookie `cookie_find` left in `COOKIE_SCRATCH` against the
/// configured secrets and the RFC 9018 window: `COOKIE_VALID`, `COOKIE_INVALID` or
/// `COOKIE_STALE`, counted; a valid one proves its source (`proof`). A global
/// function, as `cookie_find`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cookie_verify() -> u64 {
    let outcome = verify();
    bump_cookie(outcome);
    u64::from(outcome)
}

#[inline(always)]
fn verify() -> u8 {
    let (Ok(config), Some(scratch)) = (config(), scratch()) else {
        return COOKIE_INVALID;
    };
    let cookie = &scratch.cookie;
    let word = |from: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&cookie[from..from + 8]);
        u64::from_le_bytes(bytes)
    };
    let (client, server_header, hash) = (word(0), word(8), word(16));
    let secrets = &config.cookies;
    let v6 = scratch.v6 != 0;
    let made = secrets.count != 0
        && (cookie_hash(&secrets.keys[0], client, server_header, scratch.addr, v6) == hash
            || (secrets.count > 1
                && cookie_hash(&secrets.keys[1], client, server_header, scratch.addr, v6) == hash));
    if !made {
        return COOKIE_INVALID;
    }
    let timestamp = u32::from_be_bytes([cookie[12], cookie[13], cookie[14], cookie[15]]);
    // SAFETY: a helper without arguments.
    let tai_s = unsafe { bpf_ktime_get_tai_ns() } / 1_000_000_000;
    let now = (tai_s as i64 + i64::from(secrets.tai_to_unix_s)) as u32;
    if cookie_fresh(timestamp, now) {
        let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
        if record_proof(scratch.addr, family, config)
            && let Some(counters) = COUNTERS.get_ptr_mut(0)
        {
            // SAFETY: this CPU's counters; XDP programs do not nest on a CPU.
            unsafe { (*counters).bump(Counter::ProvedCookie) };
        }
        COOKIE_VALID
    } else {
        COOKIE_STALE
    }
}

/// Counts a cookie check's outcome on this CPU.
#[inline(always)]
fn bump_cookie(outcome: u8) {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's counters; XDP programs do not nest on a CPU.
        unsafe { (*counters).bump_cookie(outcome) };
    }
}

/// `N` bytes at frame offset `at` into `into`, if the frame has them.
#[inline(always)]
fn load<const N: usize>(ctx: *mut xdp_md, at: u32, into: &mut [u8; N]) -> bool {
    // SAFETY: the helper checks the frame's bounds and writes at most N bytes.
    unsafe { bpf_xdp_load_bytes(ctx, at, into.as_mut_ptr().cast(), N as u32) == 0 }
}

/// This CPU's `COOKIE_SCRATCH` as the parts a check reads into.
#[inline(always)]
fn scratch() -> Option<&'static mut CookieScratch> {
    let slot = COOKIE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, as large as `CookieScratch` and as aligned (8: the map
    // value's alignment); XDP programs do not nest on a CPU.
    Some(unsafe { &mut *slot.cast::<CookieScratch>() })
}

/// What a cookie check reads from the packet and hands from one step to the next, in
/// `COOKIE_SCRATCH` rather than on the stack.
#[repr(C)]
struct CookieScratch {
    /// The source address as two little-endian words (the hash's input); whether it is
    /// IPv6.
    addr: [u64; 2],
    v6: u64,
    cookie: [u8; FULL_COOKIE_LEN],
    header: [u8; DNS_HEADER_LEN],
    opt: [u8; 11],
    option: [u8; 4],
    _pad: u8,
}

const _: () = assert!(size_of::<CookieScratch>() <= COOKIE_SCRATCH_LEN);
