//! Sources that proved their address: by completing a TCP handshake with this server
//! (`egress`: the server sends a TCP segment with data to it, which the stack does only
//! on an established connection) or by a valid DNS server cookie (`cookie`). A proof is kept in `PROVEN` until it expires (`--proof-ttl`); over the
//! server budget, proven sources are served first (`budget`). The slot rules are
//! `dns_xdp_common::proven`'s.

use crate::maps::{PROVEN, SOURCE_HASH};
use aya_ebpf::bindings::xdp_md;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes};
use dns_xdp_common::{
    Config, FAMILY_V6, PROVEN_LINES, PROVEN_WAYS, ProvenLine, line_index, proof_fresh, proven_in,
    proven_key, proven_slot, siphash13,
};

/// The source address of the packet whose IP header is at frame offset `l3`, as the two
/// little-endian words `address_words` makes of it: IPv4's at byte 12 of its header,
/// IPv6's at byte 8, read straight into the words (BPF is little-endian).
#[inline(always)]
pub(crate) fn load_source(ctx: *mut xdp_md, l3: u32, family: u8, addr: &mut [u64; 2]) -> bool {
    *addr = [0; 2];
    // SAFETY: the helper checks the frame's bounds and writes at most 16 or 4 bytes.
    unsafe {
        if family == FAMILY_V6 {
            bpf_xdp_load_bytes(ctx, l3 + 8, addr.as_mut_ptr().cast(), 16) == 0
        } else {
            bpf_xdp_load_bytes(ctx, l3 + 12, addr.as_mut_ptr().cast(), 4) == 0
        }
    }
}

/// The `PROVEN` line of the source `addr` of `family` at the per-source prefix (the
/// first level's), and its key there.
#[inline(always)]
fn proven_line(
    addr: [u64; 2],
    family: u8,
    config: &Config,
) -> Option<(&'static mut ProvenLine, [u64; 3])> {
    let table = SOURCE_HASH.get(0)?;
    let key = proven_key(addr, family, &config.levels[0]);
    let line = PROVEN.get_ptr_mut(line_index(siphash13(&table.secret, &key), PROVEN_LINES))?;
    // SAFETY: a map value. Slots are read and written without a lock: a slot two CPUs
    // write at once may hold one's key with the other's expiry, which proves one of the
    // two sources (both proved themselves) for a while.
    Some((unsafe { &mut *line }, key))
}

/// Whether the source `addr` of `family` holds an unexpired proof at `now`.
#[inline(always)]
pub(crate) fn is_proven(addr: [u64; 2], family: u8, config: &Config, now: u64) -> bool {
    proven_line(addr, family, config).is_some_and(|(line, key)| proven_in(line, &key, now))
}

/// Records a proof of the source `addr` of `family`: whether it wrote one (a proof is
/// refreshed at most once per half lifetime). Nothing when proofs are off.
#[inline(always)]
pub(crate) fn record_proof(addr: [u64; 2], family: u8, config: &Config) -> bool {
    let ttl = config.proof_ttl_ns;
    if ttl == 0 {
        return false;
    }
    let Some((line, key)) = proven_line(addr, family, config) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let way = proven_slot(line, &key) & (PROVEN_WAYS - 1);
    if line.keys[way] == key && proof_fresh(line.until[way], now, ttl) {
        return false;
    }
    // Expiry first, so a reader never sees the new key with the evicted one's expiry.
    line.until[way] = 0;
    line.keys[way] = key;
    line.until[way] = now + ttl;
    true
}
