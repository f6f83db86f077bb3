//! dns-xdp kernel programs.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use dns_xdp_common::{Config, Counter, Counters};
use parse::Frame;

/// Runtime configuration (DNS ports); written by the loader, read per packet.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Packet counters by class, one `Counters` per CPU; written here, summed by the loader.
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

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

#[inline(always)]
fn try_dns_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let config = CONFIG.get(0).ok_or(())?;
    let counters = COUNTERS.get_ptr_mut(0).ok_or(())?;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let class = match frame.transport() {
        Ok(transport) => transport.class(&config.dns_ports),
        Err(class) => class,
    };
    // SAFETY: a per-CPU array slot is only touched by programs on this CPU, one at a time.
    let counters = unsafe { &mut *counters };
    counters.bump(Counter::Packets);
    counters.bump(class.counter());
    Ok(xdp_action::XDP_PASS)
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
