//! dns-xdp kernel programs: the entry points. A packet's path, stage by stage: `parse`
//! (cursor parser), `ingress` (classify, count, dispatch), `policy` (lists, levels,
//! buckets, budget, slip), `cookie` (DNS cookies), `tcp` (segments of connections), `answers` (answer
//! admission), `slip` (truncated replies), `egress` (TC); every map is in `maps`.
#![no_std]
#![no_main]
// The BPF target has no stable compare-and-swap: the intrinsics lower to BPF atomics.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod answers;
mod budget;
mod cookie;
mod egress;
mod ingress;
mod maps;
mod parse;
mod policy;
mod proof;
mod question;
mod sample;
mod slip;
mod tcp;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::error;

#[xdp]
pub fn dns_xdp(ctx: XdpContext) -> u32 {
    match ingress::try_dns_xdp(&ctx) {
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

/// Egress (TC, TCX where the kernel has it): counts responses and upstream queries
/// leaving, with the same parser as XDP. Observes only: always hands the packet on.
#[classifier]
pub fn dns_xdp_egress(ctx: TcContext) -> i32 {
    let _ = egress::try_dns_xdp_egress(&ctx);
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
