//! A query's question name, walked label by label over the packet: a `bpf_loop` step
//! verified once (not a loop over packet pointers, walked again for every header layout
//! the parser leaves), each step `dns_xdp_common::label_step`. Slip uses it to find the
//! end of the question it echoes, the sampler to record what a query asks.

use aya_ebpf::programs::XdpContext;
use aya_ebpf::{bindings::xdp_md, cty::c_void, helpers::bpf_loop, helpers::bpf_xdp_load_bytes};
use dns_xdp_common::{MAX_LABELS, NAME_NONE, NAME_TRUNCATED, NameScan, label_step};

/// The scan of the name that starts at frame offset `start`, in a message whose bytes
/// end at frame offset `end`.
#[inline(always)]
pub(crate) fn scan_name(ctx: &XdpContext, start: usize, end: usize) -> NameScan {
    let mut walk = NameWalk {
        ctx: ctx.ctx,
        start: start as u32,
        at: start as u32,
        end: end as u32,
        status: if start < end {
            NAME_TRUNCATED
        } else {
            NAME_NONE
        },
        name_end: start as u32,
    };
    if start < end {
        // SAFETY: the callback reads and writes `walk` only, which outlives the call.
        unsafe {
            bpf_loop(
                MAX_LABELS as u32,
                label_callback as *mut c_void,
                core::ptr::from_mut(&mut walk).cast(),
                0,
            )
        };
    }
    NameScan::new(walk.status, walk.name_end as usize)
}

/// A walk over a question name: `bpf_loop`'s context, on the caller's stack.
struct NameWalk {
    ctx: *mut xdp_md,
    /// Where the name starts, the label being read, and where the message ends.
    start: u32,
    at: u32,
    end: u32,
    /// What the walk found so far: truncated until it ends otherwise.
    status: u8,
    name_end: u32,
}

/// Reads the label at `walk.at`: 0 to go on to the next, 1 to stop.
extern "C" fn label_callback(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk` is the `NameWalk` scan_name handed to bpf_loop.
    let walk = unsafe { &mut *walk.cast::<NameWalk>() };
    let mut label = 0u8;
    // SAFETY: a one-byte read from the frame into a local.
    if unsafe { bpf_xdp_load_bytes(walk.ctx, walk.at, (&raw mut label).cast(), 1) } != 0 {
        return 1;
    }
    match label_step(
        walk.start as usize,
        walk.at as usize,
        label,
        walk.end as usize,
    ) {
        Ok(next) => {
            walk.at = next as u32;
            walk.name_end = next as u32;
            0
        }
        Err(scan) => {
            walk.status = scan.status;
            walk.name_end = scan.name_end as u32;
            1
        }
    }
}
