//! The XDP path's first steps: parse, classify, count, and hand each class to its
//! decision (a query to the policy, an answer or a later fragment to answer admission).

use crate::answers::{admit_answer, admit_fragment};
use crate::maps::{COUNTERS, PACKET_SLOT, config, untracked_in};
use crate::parse::{Frame, Transport};
use crate::policy::police_query;
use crate::sample::sample;
use aya_ebpf::bindings::xdp_action;
use aya_ebpf::programs::XdpContext;
use dns_xdp_common::{Class, Config, Counter, Counters};

#[inline(always)]
pub(crate) fn try_dns_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let config = config()?;
    let counters = COUNTERS.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU array slot is only touched by programs on this CPU, one at a time.
    let counters = unsafe { &mut *counters };
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let parsed = frame.transport();
    let class = match &parsed {
        Ok(transport) => transport.class(&config.dns_ports),
        Err(class) => *class,
    };
    counters.bump(Counter::Packets);
    counters.bump(class.counter());
    let transport = match (parsed, class) {
        (_, Class::NonDns) => return Ok(xdp_action::XDP_PASS),
        // What the parser cannot finish (a header chain past its bounds, a truncated or
        // inconsistent header) is dropped: the kernel may still deliver some of it, and
        // nothing unparsed gets past the policy.
        (Err(_), _) => return Ok(refuse(config, counters)),
        (Ok(transport), _) => forget_layout(transport).ok_or(())?,
    };
    let verdict = match class {
        Class::Query { .. } => police_query(ctx, &frame, &transport, config, counters),
        Class::Answer { .. } => return Ok(admit_answer(&frame, &transport, config, counters)),
        _ => admit_fragment(ctx, &frame, &transport, config, counters),
    };
    Ok(sample(ctx, verdict))
}

/// `transport` with its values unknown to the verifier, so that nothing after this point
/// is verified once per header layout the parser can leave (each layout ends with
/// different constant offsets, and states that differ in a constant do not merge).
/// The stored copy stays in `PACKET_SLOT` for the sampler.
#[inline(always)]
pub(crate) fn forget_layout(transport: Transport) -> Option<Transport> {
    untracked_in(PACKET_SLOT, transport.to_stored()).map(Transport::from_stored)
}

/// Drop, or pass and count in dry-run.
#[inline(always)]
pub(crate) fn refuse(config: &Config, counters: &mut Counters) -> u32 {
    if config.dry_run() {
        counters.bump(Counter::DryRunWouldDrop);
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}
