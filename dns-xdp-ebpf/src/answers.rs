//! Answer admission: a packet from a DNS port passes only if it answers a query or
//! belongs to a TCP connection this host sent (recorded on egress in `AWAITED`), and a
//! later fragment only if its datagram's first fragment was such an answer.

use crate::ingress::refuse;
use crate::maps::{AWAITED, FRAGMENTS};
use crate::parse::{Frame, Transport};
use crate::policy::police_query;
use crate::sample::Verdict;
use aya_ebpf::bindings::xdp_action;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::XdpContext;
use dns_xdp_common::{AwaitedKey, Config, Counter, Counters, FRAGMENT_WINDOW_NS, FragmentKey, L4};

/// An answer (a packet from a DNS port) passes only if it answers a query or belongs to
/// a TCP connection this host sent (`AWAITED`, recorded on egress). A UDP answer retires
/// its query; if it is a datagram's first fragment, the rest of it is awaited.
#[inline(always)]
pub(crate) fn admit_answer(
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> u32 {
    let tcp = transport.l4 == L4::Tcp;
    let id = if tcp {
        Some(0)
    } else {
        frame.dns_id(transport.payload, transport.payload_len)
    };
    let (Some(remote), Some(id), true) = (frame.source_address(transport), id, config.backending())
    else {
        counters.bump(Counter::AnswerUnsolicited);
        return refuse(config, counters);
    };
    let key = AwaitedKey::new(
        remote,
        transport.src_port,
        transport.dst_port,
        id,
        transport.family,
        tcp,
    );
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !awaited(&key, now) {
        counters.bump(Counter::AnswerUnsolicited);
        return refuse(config, counters);
    }
    if !tcp {
        let _ = AWAITED.remove(key);
        if transport.first_fragment {
            let fragment = FragmentKey::new(remote, transport.fragment_id, transport.family);
            let _ = FRAGMENTS.insert(fragment, now + FRAGMENT_WINDOW_NS, 0);
        }
    }
    counters.bump(Counter::AnswerAdmitted);
    xdp_action::XDP_PASS
}

/// Whether `AWAITED` holds `key`, unexpired at `now`.
#[inline(always)]
pub(crate) fn awaited(key: &AwaitedKey, now: u64) -> bool {
    // SAFETY: a map value, read once.
    AWAITED
        .get_ptr(key)
        .is_some_and(|state| unsafe { (*state).expires_ns } >= now)
}

/// A later fragment passes if its datagram's first fragment was an admitted answer;
/// any other is charged to its source's buckets as a query is (it may be a large
/// query's), and decided by the lists and levels like one.
#[inline(always)]
pub(crate) fn admit_fragment(
    ctx: &XdpContext,
    frame: &Frame,
    transport: &Transport,
    config: &Config,
    counters: &mut Counters,
) -> Verdict {
    if let Some(remote) = frame.source_address(transport) {
        let key = FragmentKey::new(remote, transport.fragment_id, transport.family);
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if FRAGMENTS.get_ptr(key).is_some_and(|expires| {
            // SAFETY: a map value, read once.
            let expires = unsafe { *expires };
            expires >= now
        }) {
            counters.bump(Counter::FragmentAdmitted);
            return Verdict::unsampled(xdp_action::XDP_PASS);
        }
    }
    counters.bump(Counter::FragmentPoliced);
    police_query(ctx, frame, transport, config, counters)
}
