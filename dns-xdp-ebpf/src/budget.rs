//! The server budget: one GCRA for all admitted queries, shared by every CPU, with a
//! per-CPU credit so that the shared `tat` is written once per chunk. Its tiers
//! (`dns_xdp_common::budget_gcra`) serve proven sources first, then light ones, then
//! heavy ones.

use crate::maps::{BUDGET, BUDGET_CREDIT, COUNTERS, config};
use crate::proof::{is_proven, load_source};
use aya_ebpf::bindings::xdp_md;
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use dns_xdp_common::{
    BUDGET_HEAVY, BUDGET_LIGHT, BUDGET_PROVEN, Counter, budget_chunk, budget_gcra, budget_pressed,
};

/// Compare-and-swap attempts on the budget's `tat` before a query is shed as contended.
/// More than a source bucket's (`policy::MAX_CAS_ATTEMPTS`): every admitted query on
/// every CPU moves this one, so under a flood a proven query would otherwise lose its
/// place to the flood's admissions (about 5 % of a proven client's queries at 200 000
/// flood queries/s on 2 CPUs with 3). This function is verified once, so attempts cost
/// the verifier little.
const BUDGET_CAS_ATTEMPTS: usize = 8;

/// `budget_spend`: admitted.
pub(crate) const BUDGET_ADMITTED: u64 = 0;
/// `budget_spend`: shed, from a source not proven (a UDP query is slipped then).
pub(crate) const BUDGET_SHED_UNPROVEN: u64 = 1;
/// `budget_spend`: shed although proven (the budget is spent on proven sources alone).
pub(crate) const BUDGET_SHED_PROVEN: u64 = 2;

/// `budget_spend`'s query word: the queries to charge (bits 0..32) ...
pub(crate) const QUERY_COST: u64 = 0xffff_ffff;
/// ... whether a level found the source or its prefix heavy ...
pub(crate) const QUERY_HEAVY: u64 = 1 << 32;
/// ... and whether the query proves its source itself (a valid cookie, a segment of a
/// TCP connection the server accepted).
pub(crate) const QUERY_PROVEN: u64 = 1 << 33;

/// Spends the server budget on a query (`query`: `QUERY_*`) from the source of the
/// packet whose IP header is at frame offset `l3` (packed as `l3 << 8 | family`), at
/// `now`: `BUDGET_*`, counted. This CPU's credit first; else a chunk for it while the
/// budget is less than half spent (`budget_chunk`); else the query's tier decides
/// (`budget_gcra`), for which a source the query does not prove is looked up in
/// `PROVEN` (only then: a budget not pressed costs no lookup). A global function (its
/// own BTF linkage): verified once, on its own, with scalar arguments.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn budget_spend(ctx: *mut xdp_md, now: u64, l3_family: u64, query: u64) -> u64 {
    let (Ok(config), Some(counters)) = (config(), COUNTERS.get_ptr_mut(0)) else {
        return BUDGET_ADMITTED;
    };
    // SAFETY: this CPU's counters; XDP programs do not nest on a CPU.
    let counters = unsafe { &mut *counters };
    let limit = &config.budget;
    let cost = query & QUERY_COST;
    let credit = BUDGET_CREDIT.get_ptr_mut(0);
    if let Some(credit) = credit {
        // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU do not
        // interleave (XDP runs with migration and preemption off).
        if unsafe { (*credit).spend(cost) } {
            return BUDGET_ADMITTED;
        }
    }
    let Some(tat) = BUDGET.get_ptr_mut(0) else {
        return BUDGET_ADMITTED;
    };
    // SAFETY: `tat` is an aligned u64 in a map value.
    let pressed = budget_pressed(unsafe { core::ptr::read_volatile(tat) }, now, limit);
    let proven = query & QUERY_PROVEN != 0
        || (pressed && config.proof_ttl_ns != 0 && {
            let (l3, family) = ((l3_family >> 8) as u32 & 0xffff, l3_family as u8);
            let mut addr = [0u64; 2];
            load_source(ctx, l3, family, &mut addr) && is_proven(addr, family, config, now)
        });
    let tier = if proven {
        BUDGET_PROVEN
    } else if query & QUERY_HEAVY != 0 {
        BUDGET_HEAVY
    } else {
        BUDGET_LIGHT
    };
    let chunk = u64::from(config.budget_chunk);
    let mut contended = true;
    for _ in 0..BUDGET_CAS_ATTEMPTS {
        // SAFETY: as above.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let (next, drawn) = match budget_chunk(current, now, limit, chunk, cost) {
            Some(next) => (next, chunk),
            None => match budget_gcra(current, now, limit, tier, cost) {
                Some(next) => (next, cost),
                None => {
                    contended = false;
                    break;
                }
            },
        };
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, next,
            )
        };
        if swapped {
            if let Some(credit) = credit {
                // SAFETY: as above; `drawn` >= `cost`.
                unsafe { (*credit).queries += drawn - cost };
            }
            if pressed {
                counters.bump(if proven {
                    Counter::BudgetServedProven
                } else {
                    Counter::BudgetServedUnproven
                });
            }
            return BUDGET_ADMITTED;
        }
    }
    counters.bump_budget_shed(tier);
    if contended {
        // Shed with room left, because other CPUs kept admitting: counted apart too.
        counters.bump(Counter::RateContended);
    }
    if proven {
        BUDGET_SHED_PROVEN
    } else {
        BUDGET_SHED_UNPROVEN
    }
}
