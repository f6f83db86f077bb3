//! The egress (TC) path: counts DNS leaving the interface and records what XDP will
//! let back in (upstream queries and connections, the server's TCP connections), and
//! which clients proved their address over TCP (`proof`).

use crate::maps::{AWAITED, EGRESS_COUNTERS, config};
use crate::parse::{Frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Transport};
use crate::proof::record_proof;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use dns_xdp_common::tcp::{STREAM_DESYNCED, TcpStream, seq_latest};
use dns_xdp_common::{
    AWAITED_TCP_IDLE_NS, AWAITED_UDP_NS, AwaitedKey, AwaitedState, Class, Config, EgressCounter,
    L4, address_words,
};

/// Bytes made linear before parsing: every header the parser may read in a DNS packet.
pub(crate) const EGRESS_PULL_BYTES: u32 = 256;

#[inline(always)]
pub(crate) fn try_dns_xdp_egress(ctx: &TcContext) -> Result<(), ()> {
    let config = config()?;
    let counters = EGRESS_COUNTERS.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU array slot is only touched by programs on this CPU, one at a time.
    let counters = unsafe { &mut *counters };
    counters.bump(EgressCounter::Packets);
    let len = ctx.len();
    // Headers may sit in paged fragments on egress; make them linear (a no-op when they are).
    let _ = ctx.pull_data(if len < EGRESS_PULL_BYTES {
        len
    } else {
        EGRESS_PULL_BYTES
    });
    let frame = Frame::local(ctx.data(), ctx.data_end());
    let parsed = frame.transport();
    let class = match &parsed {
        Ok(transport) => transport.class(&config.dns_ports),
        Err(class) => *class,
    };
    if let Some((packets, bytes)) = EgressCounter::for_class(class) {
        counters.bump(packets);
        counters.add_to(bytes, u64::from(len));
    }
    // Upstream queries and connections (backending), and the TCP connections this
    // server accepted (its SYN-ACK and answers): what XDP will let back in.
    let record = match class {
        Class::Query { .. } => config.backending(),
        Class::Answer { l4: L4::Tcp, .. } => true,
        _ => false,
    };
    if let (Ok(transport), true) = (parsed, record) {
        let recorded = if matches!(class, Class::Answer { .. }) {
            track_server_segment(&frame, &transport)
        } else {
            await_answer(&frame, &transport)
        };
        if recorded.is_some() {
            counters.bump(EgressCounter::AwaitedRecorded);
        }
        if matches!(class, Class::Answer { .. }) && prove_client(&frame, &transport, config) {
            counters.bump(EgressCounter::ProvedTcp);
        }
    }
    Ok(())
}

/// Records the proof of a client the server sends TCP data to (an answer): the stack
/// sends data only on an established connection, so the client completed the handshake
/// from its address, which a spoofer cannot. Whether a proof was written.
#[inline(always)]
fn prove_client(frame: &Frame, transport: &Transport, config: &Config) -> bool {
    transport.payload_len != 0
        && transport.tcp_flags & (TCP_SYN | TCP_RST) == 0
        && config.proof_ttl_ns != 0
        && frame
            .destination_address(transport)
            .is_some_and(|addr| record_proof(address_words(&addr), transport.family.code(), config))
}

/// Records a segment the server sends on a connection a client opened: its SYN-ACK
/// creates the record (the client's stream starts at the number it acknowledges), later
/// ones move what the client may acknowledge and how far the server acknowledged the
/// client; a reset ends it.
#[inline(always)]
pub(crate) fn track_server_segment(frame: &Frame, transport: &Transport) -> Option<()> {
    let key = AwaitedKey::new(
        frame.destination_address(transport)?,
        transport.dst_port,
        transport.src_port,
        0,
        transport.family,
        true,
    );
    let flags = transport.tcp_flags;
    if flags & TCP_RST != 0 {
        let _ = AWAITED.remove(key);
        return None;
    }
    // SAFETY: a helper without arguments.
    let expires_ns = unsafe { bpf_ktime_get_ns() } + AWAITED_TCP_IDLE_NS;
    let (seq, ack) = (transport.seq, transport.ack_seq);
    // SYN and FIN each take a sequence number.
    let sent_end = seq
        .wrapping_add(transport.payload_len as u32)
        .wrapping_add(u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0));
    let existing = AWAITED.get_ptr_mut(key);
    // SAFETY: a map value, read once.
    let resent_syn_ack =
        existing.is_some_and(|state| unsafe { (*state).server_first } == seq.wrapping_add(1));
    match existing {
        // A SYN-ACK sent again keeps the stream: what the client sent meanwhile may
        // have reached the stack.
        Some(state) if flags & TCP_SYN == 0 || resent_syn_ack => {
            // SAFETY: a map value; `dns_xdp` reads these fields whole.
            let state = unsafe { &mut *state };
            state.expires_ns = expires_ns;
            state.server_next = seq_latest(state.server_next, sent_end);
            if flags & TCP_ACK != 0 {
                state.client_acked = seq_latest(state.client_acked, ack);
            }
            Some(())
        }
        _ => {
            // A new connection; or one older than its record (evicted, or opened before
            // dns-xdp), whose message boundaries are unknown.
            let syn_ack = flags & TCP_SYN != 0;
            let state = AwaitedState {
                expires_ns,
                server_first: if syn_ack { seq.wrapping_add(1) } else { seq },
                server_next: sent_end,
                client_acked: ack,
                stream: TcpStream {
                    end: ack,
                    next_message: ack,
                    flags: if syn_ack { 0 } else { STREAM_DESYNCED },
                },
            };
            AWAITED.insert(key, state, 0).ok()
        }
    }
}

/// Records an upstream query (UDP) or a segment of an upstream TCP connection leaving,
/// so that XDP admits what comes back: the key the answer will carry, with how long to
/// await it.
#[inline(always)]
pub(crate) fn await_answer(frame: &Frame, transport: &Transport) -> Option<()> {
    let tcp = transport.l4 == L4::Tcp;
    let id = if tcp {
        0
    } else {
        frame.dns_id(transport.payload, transport.payload_len)?
    };
    let key = AwaitedKey::new(
        frame.destination_address(transport)?,
        transport.dst_port,
        transport.src_port,
        id,
        transport.family,
        tcp,
    );
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = AwaitedState {
        expires_ns: now
            + if tcp {
                AWAITED_TCP_IDLE_NS
            } else {
                AWAITED_UDP_NS
            },
        ..AwaitedState::default()
    };
    AWAITED.insert(key, state, 0).ok()
}
