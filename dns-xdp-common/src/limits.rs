//! Rate limits in GCRA form (the "virtual scheduling" token bucket): per-source buckets,
//! the server budget, and their arithmetic, kept branch-light for the kernel.

use bytemuck::{Pod, Zeroable};

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A per-source rate limit in GCRA form (the "virtual scheduling" token bucket).
/// `rate` packets per second with bursts of `burst` become an emission interval and a
/// tolerance, so the kernel needs no division.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds between packets at the sustained rate; 0 disables the limit.
    pub interval_ns: u64,
    /// How far a source's theoretical arrival time may run ahead of now: (burst - 1) × interval.
    pub tolerance_ns: u64,
}

impl Limit {
    pub const OFF: Self = Self {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `packets` per `period_ns` with bursts of `burst` packets. `None` when a value is 0
    /// or the interval would round to 0 (more than one packet per nanosecond).
    pub const fn new(packets: u64, period_ns: u64, burst: u64) -> Option<Self> {
        if packets == 0 || burst == 0 {
            return None;
        }
        let interval_ns = period_ns / packets;
        if interval_ns == 0 || interval_ns > MAX_INTERVAL_NS {
            return None;
        }
        match interval_ns.checked_mul(burst - 1) {
            // Keep tat + interval far from overflow for any boot time of the next century.
            Some(tolerance_ns) if tolerance_ns <= MAX_TOLERANCE_NS => Some(Self {
                interval_ns,
                tolerance_ns,
            }),
            _ => None,
        }
    }

    pub const fn is_on(&self) -> bool {
        self.interval_ns != 0
    }

    /// The time `cost` packets take at this rate. No overflow: the interval is at most
    /// `MAX_INTERVAL_NS` (2^48, `new` checks it) and no charge exceeds
    /// `tcp::MAX_SEGMENT_COST` (2^13).
    #[inline(always)]
    pub const fn charge_ns(&self, cost: u64) -> u64 {
        self.interval_ns * cost
    }

    /// The burst this limit admits at once.
    pub const fn burst(&self) -> u64 {
        match self.interval_ns {
            0 => 0,
            interval => self.tolerance_ns / interval + 1,
        }
    }
}

/// The largest tolerance accepted: 2^62 ns (146 years of burst).
pub const MAX_TOLERANCE_NS: u64 = 1 << 62;
/// The longest interval accepted: 2^48 ns (3.3 days between packets).
pub const MAX_INTERVAL_NS: u64 = 1 << 48;

/// GCRA admission: with the source's theoretical arrival time `tat` (0 for a new
/// source) and the time `now`, returns the new `tat` if the packet conforms, `None` if it
/// exceeds the limit. Exact: the n-th packet of a burst at one instant is admitted iff
/// n <= burst, and after that one packet per interval.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, limit: &Limit) -> Option<u64> {
    gcra_charge(tat, now, limit, 1)
}

/// GCRA admission of `cost` packets at once (a TCP segment that carries several
/// queries): conforms if they fit in what is left of the burst, or if the bucket is full
/// (`tat <= now`), so that a charge larger than the burst still passes, into debt, once
/// the source has been quiet long enough. With cost 1 this is `gcra`. Over any stretch
/// the admitted total is at most max(burst, the largest charge) + rate × time.
#[inline(always)]
pub const fn gcra_charge(tat: u64, now: u64, limit: &Limit, cost: u64) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    let charge = limit.charge_ns(cost);
    let burst = limit.tolerance_ns + limit.interval_ns;
    // One comparison for both cases: a charge larger than the burst fits only a full
    // bucket (`tat == now`), any other one what is left of the burst.
    let room = if charge > burst { charge } else { burst };
    let next = tat + charge;
    if next - now > room { None } else { Some(next) }
}

/// The latest theoretical arrival time a bucket can reach under `limit` at `now`. A
/// stored `tat` beyond it is debt run up under an older, slower limit; the programs cut it
/// back to this ceiling, so a raised limit helps from the next interval on.
#[inline(always)]
pub const fn gcra_ceiling(now: u64, limit: &Limit) -> u64 {
    now + limit.tolerance_ns + limit.interval_ns
}

/// Whether a bucket that admitted a query with its new theoretical arrival time `tat` is
/// heavy: it has spent more than half its burst (`tat - now` is the part in use).
#[inline(always)]
pub const fn is_heavy(tat: u64, now: u64, limit: &Limit) -> bool {
    let in_use = tat.saturating_sub(now);
    // The burst spans tolerance + interval.
    in_use > (limit.tolerance_ns + limit.interval_ns) / 2
}

/// `budget_gcra`'s tiers, each allowed further ahead of the budget's rate than the one
/// before: queries from a heavy source or prefix (more than half a burst spent at some
/// level) ...
pub const BUDGET_HEAVY: u8 = 0;
/// ... from a light one ...
pub const BUDGET_LIGHT: u8 = 1;
/// ... and from a proven source (a valid cookie, a TCP handshake: not spoofed).
pub const BUDGET_PROVEN: u8 = 2;

/// How far beyond the light tier proven queries may run ahead: a second of the budget,
/// or its burst if longer. Under a flood the light tier sits at its ceiling, so this is
/// all the room real clients' bursts have: one burst (a tenth of a second by default)
/// shed 2 to 5 % of a proven client's queries in the end-to-end benchmark (a client
/// that sends in catch-up bursts on a loaded machine), a second none.
pub const PROVEN_ALLOWANCE_NS: u64 = NS_PER_SEC;

/// Server budget admission: a GCRA at the budget's rate with a tolerance per tier. A
/// heavy query conforms while the budget's `tat` runs at most the burst tolerance ahead
/// of now; a light one while it runs at most twice that plus one interval, a reserve of
/// one more burst that only light queries can draw; a proven one a further second (or
/// burst, if longer: `PROVEN_ALLOWANCE_NS`) that only proven queries can draw. Returns
/// the new `tat`, or `None` if the query is to be shed.
///
/// Under sustained overload the admitted total is the budget's rate: proven queries are
/// served first, light ones get what proven ones leave, heavy ones what light ones
/// leave; within a tier it is first come, first served, so each source is shed in
/// proportion to what it sends.
#[inline(always)]
pub const fn budget_gcra(tat: u64, now: u64, limit: &Limit, tier: u8, cost: u64) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    let tolerance = budget_tolerance(limit, tier);
    if tat - now > tolerance {
        None
    } else {
        Some(tat + limit.charge_ns(cost))
    }
}

/// How far ahead of now the budget's `tat` may run for a query of `tier` to conform.
#[inline(always)]
pub const fn budget_tolerance(limit: &Limit, tier: u8) -> u64 {
    let light = limit.tolerance_ns * 2 + limit.interval_ns;
    match tier {
        BUDGET_HEAVY => limit.tolerance_ns,
        BUDGET_LIGHT => light,
        _ => {
            let burst = limit.tolerance_ns + limit.interval_ns;
            light
                + if burst > PROVEN_ALLOWANCE_NS {
                    burst
                } else {
                    PROVEN_ALLOWANCE_NS
                }
        }
    }
}

/// Whether the budget whose `tat` is as given is pressed at `now`: more than half its
/// burst spent, where CPUs draw no more chunks and its tiers begin to matter.
#[inline(always)]
pub const fn budget_pressed(tat: u64, now: u64, limit: &Limit) -> bool {
    tat > now && tat - now > limit.tolerance_ns / 2
}

/// A limit of `rate` per second with bursts of `burst`, for tests.
#[cfg(test)]
pub(crate) fn per_second(rate: u64, burst: u64) -> Limit {
    Limit::new(rate, NS_PER_SEC, burst).unwrap()
}

/// One CPU's credit of server-budget queries, drawn from the shared `tat` a chunk at a
/// time (`budget_chunk`), so that an admitted query writes the one cache line all CPUs
/// share once per chunk instead of every time. Per CPU, never shared.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct BudgetCredit {
    /// Queries already paid for in the shared `tat`, not yet admitted.
    pub queries: u64,
}

impl BudgetCredit {
    /// Admits `cost` queries from the credit if it holds them.
    #[inline(always)]
    pub const fn spend(&mut self, cost: u64) -> bool {
        if self.queries >= cost {
            self.queries -= cost;
            true
        } else {
            false
        }
    }
}

/// The most queries one draw takes: one shared write per 32 admitted queries leaves
/// nothing to gain, and larger chunks only hold more of the burst on idle CPUs.
pub const MAX_BUDGET_CHUNK: u32 = 32;

/// The chunk a CPU draws for its credit: small enough that all CPUs together hold at
/// most a quarter of the budget's burst unspent, at most `MAX_BUDGET_CHUNK`. Below 2
/// there is nothing to gain: every query is charged to the shared `tat`.
pub const fn budget_chunk_size(limit: &Limit, cpus: u32) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus } as u64;
    let chunk = limit.burst() / (4 * cpus);
    if chunk > MAX_BUDGET_CHUNK as u64 {
        MAX_BUDGET_CHUNK
    } else if chunk < 2 {
        0
    } else {
        chunk as u32
    }
}

/// Draws a chunk of `chunk` queries of the server budget for one CPU's credit, one of
/// them for a query of `cost`: the new `tat`, or `None` to charge the query alone
/// (`budget_gcra`). Drawn only while the budget's bucket stays more than half full
/// after the draw: then no query is shed whoever holds the credit, the light reserve
/// is never touched, and as the budget runs low every query is charged exactly. Every
/// admitted query is paid for in the shared `tat`: over any stretch of time the budget
/// admits at most its burst + rate × time + what the CPUs hold unspent (at most a quarter
/// of the burst, `budget_chunk_size`).
#[inline(always)]
pub const fn budget_chunk(tat: u64, now: u64, limit: &Limit, chunk: u64, cost: u64) -> Option<u64> {
    if chunk <= cost {
        return None;
    }
    let tat = if tat > now { tat } else { now };
    let next = tat + limit.charge_ns(chunk);
    if next - now > limit.tolerance_ns / 2 {
        None
    } else {
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets admitted when `count` arrive at the instants `at(i)`.
    fn admitted(limit: &Limit, count: u64, at: impl Fn(u64) -> u64) -> u64 {
        let mut tat = 0;
        let mut admitted = 0;
        for index in 0..count {
            if let Some(next) = gcra(tat, at(index), limit) {
                tat = next;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn gcra_admits_exactly_the_burst_at_one_instant() {
        for (rate, burst) in [
            (1, 1),
            (10, 20),
            (1000, 1),
            (10_000_000, 5000),
            (1, 1_000_000),
        ] {
            let limit = per_second(rate, burst);
            assert_eq!(limit.burst(), burst);
            assert_eq!(
                admitted(&limit, burst * 2 + 10, |_| 1_000_000),
                burst,
                "{rate}/s {burst}"
            );
        }
    }

    #[test]
    fn gcra_admits_the_rate_after_the_burst() {
        // 10/s, burst 20, one packet every millisecond from 0 to 10 s inclusive: 20 + 10 × 10.
        let limit = per_second(10, 20);
        assert_eq!(admitted(&limit, 10_001, |i| 5 + i * 1_000_000), 20 + 100);
        // A source at exactly the rate is never refused.
        assert_eq!(admitted(&limit, 1000, |i| 7 + i * 100_000_000), 1000);
        // 10 M/s, burst 1: one packet per 100 ns, whatever arrives in between.
        let fast = per_second(10_000_000, 1);
        assert_eq!(admitted(&fast, 1_000_000, |i| 1 + i * 10), 100_000);
    }

    #[test]
    fn gcra_refills_after_idle_time_but_not_beyond_the_burst() {
        let limit = per_second(100, 5);
        let mut tat = gcra(0, 1_000, &limit).unwrap();
        for _ in 0..4 {
            tat = gcra(tat, 1_000, &limit).unwrap();
        }
        assert_eq!(gcra(tat, 1_000, &limit), None);
        // An hour later the bucket is full again: 5 at once, not more.
        let later = 1_000 + 3600 * NS_PER_SEC;
        assert_eq!(admitted(&limit, 50, |_| later), 5);
    }

    #[test]
    fn a_raised_limit_forgives_debt_beyond_one_bucket() {
        let slow = per_second(1, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 1_000, &slow).unwrap();
        }
        let fast = per_second(1000, 1000);
        assert_eq!(gcra(tat, 1_000, &fast), None, "the old debt still refuses");
        let ceiling = gcra_ceiling(1_000, &fast);
        assert!(tat > ceiling);
        // Cut back to the ceiling, the bucket admits again one interval later.
        assert_eq!(gcra(ceiling, 1_000 + fast.interval_ns - 1, &fast), None);
        assert!(gcra(ceiling, 1_000 + fast.interval_ns, &fast).is_some());
    }

    #[test]
    fn limits_reject_zero_and_overflow() {
        assert_eq!(Limit::new(0, NS_PER_SEC, 5), None);
        assert_eq!(Limit::new(5, NS_PER_SEC, 0), None);
        assert_eq!(Limit::new(2_000_000_000, NS_PER_SEC, 5), None);
        assert_eq!(Limit::new(1, NS_PER_SEC, u64::MAX), None);
        assert!(Limit::new(1, NS_PER_SEC, u64::from(u32::MAX)).is_some());
        assert_eq!(
            Limit::new(600, 60 * NS_PER_SEC, 1).unwrap().interval_ns,
            100_000_000
        );
    }

    #[test]
    fn gcra_does_not_overflow_at_extreme_times() {
        let limit = per_second(1, u64::from(u32::MAX));
        let now = u64::MAX - (MAX_TOLERANCE_NS + 2 * NS_PER_SEC);
        assert!(gcra(0, now, &limit).is_some());
        assert!(gcra(now + limit.tolerance_ns, now, &limit).is_some());
    }

    #[test]
    fn heavy_means_more_than_half_a_burst_in_use() {
        let limit = per_second(10, 20); // interval 100 ms, burst 20 = 2 s of tat ahead
        let now = 100 * NS_PER_SEC;
        assert!(!is_heavy(now + limit.interval_ns, now, &limit));
        assert!(!is_heavy(now + NS_PER_SEC, now, &limit)); // exactly half
        assert!(is_heavy(now + NS_PER_SEC + 1, now, &limit));
        assert!(!is_heavy(now - 5, now, &limit));
    }

    /// Admissions at one instant, heavy and light, from an idle budget.
    fn budget_admissions(limit: &Limit, heavy_first: u64, light_then: u64) -> (u64, u64) {
        let now = 50 * NS_PER_SEC;
        let mut tat = 0;
        let mut admitted = (0, 0);
        for (count, heavy) in [(heavy_first, true), (light_then, false)] {
            for _ in 0..count {
                if let Some(next) = budget_gcra(tat, now, limit, u8::from(!heavy), 1) {
                    tat = next;
                    if heavy {
                        admitted.0 += 1;
                    } else {
                        admitted.1 += 1;
                    }
                }
            }
        }
        admitted
    }

    #[test]
    fn the_budget_keeps_a_reserve_for_light_queries() {
        let limit = per_second(1000, 100);
        // Heavy queries get the burst and no more; light ones still find a second burst.
        assert_eq!(budget_admissions(&limit, 1000, 1000), (100, 100));
        // Light queries alone get both bursts.
        assert_eq!(budget_admissions(&limit, 0, 1000), (0, 200));
        // Over time, the budget's rate: 1 s of heavy arrivals every 100 µs (10 000/s)
        // gets 1 000/s plus the burst.
        let mut tat = 0;
        let mut admitted = 0;
        for step in 0..10_000u64 {
            let now = NS_PER_SEC + step * 100_000;
            if let Some(next) = budget_gcra(tat, now, &limit, BUDGET_HEAVY, 1) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100 + 1000 - 1);
    }

    #[test]
    fn proven_queries_are_served_first_under_a_flood_of_light_ones() {
        // A budget of 1 000/s; light (unproven) queries at 10 000/s, proven ones at
        // 500/s, interleaved, for 2 s.
        let limit = per_second(1000, 100);
        let mut tat = 0;
        let (mut light, mut proven, mut proven_sent) = (0u64, 0u64, 0u64);
        for step in 0..20_000u64 {
            let now = NS_PER_SEC + step * 100_000;
            let tier = if step % 20 == 0 {
                proven_sent += 1;
                BUDGET_PROVEN
            } else {
                BUDGET_LIGHT
            };
            if let Some(next) = budget_gcra(tat, now, &limit, tier, 1) {
                tat = next;
                if tier == BUDGET_PROVEN {
                    proven += 1;
                } else {
                    light += 1;
                }
            }
        }
        assert_eq!(proven, proven_sent, "every proven query is served");
        // The rest of the budget goes to light queries: 2 000 + two bursts in all.
        assert!(light + proven <= 2000 + 200, "{light} + {proven}");
        assert!(light >= 1000, "{light}");
        assert!(budget_pressed(tat, NS_PER_SEC + 20_000 * 100_000, &limit));
    }

    #[test]
    fn proven_bursts_of_up_to_a_second_are_served_over_a_flood_and_no_more() {
        // A budget of 1 000/s, burst 100 (a tenth of a second), held at the light
        // ceiling by a flood; then proven clients send 900 queries at one instant.
        let limit = per_second(1000, 100);
        let now = NS_PER_SEC;
        let mut tat = 0;
        while let Some(next) = budget_gcra(tat, now, &limit, BUDGET_LIGHT, 1) {
            tat = next;
        }
        // Proven queries at one instant: how many the budget admits.
        let mut proven = |count: u32| {
            (0..count)
                .filter(|_| match budget_gcra(tat, now, &limit, BUDGET_PROVEN, 1) {
                    Some(next) => {
                        tat = next;
                        true
                    }
                    None => false,
                })
                .count()
        };
        assert_eq!(
            proven(900),
            900,
            "a proven burst within a second of the budget"
        );
        // Beyond a second of the budget, even proven queries are shed: at most light
        // ceiling + a second ahead.
        let more = proven(200);
        assert_eq!(
            more, 100,
            "the rest of the second (1 000 in all), then nothing"
        );
        assert_eq!(
            budget_tolerance(&limit, BUDGET_PROVEN),
            budget_tolerance(&limit, BUDGET_LIGHT) + NS_PER_SEC
        );
        // A budget whose burst is longer than a second: a burst more, as light has.
        let slow = per_second(10, 50);
        assert_eq!(
            budget_tolerance(&slow, BUDGET_PROVEN) - budget_tolerance(&slow, BUDGET_LIGHT),
            budget_tolerance(&slow, BUDGET_LIGHT) - budget_tolerance(&slow, BUDGET_HEAVY)
        );
    }

    #[test]
    fn cpus_hold_at_most_a_quarter_of_the_budget_burst() {
        let limit = per_second(100_000, 10_000);
        assert_eq!(budget_chunk_size(&limit, 2), MAX_BUDGET_CHUNK);
        assert_eq!(budget_chunk_size(&limit, 128), 19);
        assert_eq!(budget_chunk_size(&limit, 2048), 0);
        assert_eq!(budget_chunk_size(&per_second(1000, 8), 1), 2);
        assert_eq!(budget_chunk_size(&per_second(1000, 7), 1), 0);
        assert_eq!(budget_chunk_size(&limit, 0), MAX_BUDGET_CHUNK);
        for cpus in [1, 2, 3, 7, 64, 500] {
            let chunk = u64::from(budget_chunk_size(&limit, cpus));
            assert!(u64::from(cpus) * chunk.saturating_sub(1) <= limit.burst() / 4);
        }
    }

    #[test]
    fn chunks_are_drawn_only_while_the_bucket_stays_over_half_full() {
        let limit = per_second(1000, 101); // interval 1 ms, tolerance 100 ms
        let now = 10 * NS_PER_SEC;
        let ms = 1_000_000;
        assert_eq!(budget_chunk(0, now, &limit, 16, 1), Some(now + 16 * ms));
        assert_eq!(
            budget_chunk(now + 34 * ms, now, &limit, 16, 1),
            Some(now + 50 * ms)
        );
        assert_eq!(budget_chunk(now + 35 * ms, now, &limit, 16, 1), None);
        // A charge as large as the chunk goes alone; chunks of 0 or 1 are off.
        assert_eq!(budget_chunk(0, now, &limit, 16, 16), None);
        assert_eq!(budget_chunk(0, now, &limit, 1, 1), None);
        assert_eq!(budget_chunk(0, now, &limit, 0, 1), None);
    }

    /// CPUs taking turns at random, each admitting from its credit or drawing: 5 s at half
    /// the budget, then 5 s at twice it. Under the budget every query is admitted with a
    /// shared write per chunk; over it the admitted total stays within what the exact
    /// budget admits plus what the CPUs hold, and within burst + rate x time.
    #[test]
    fn credits_admit_what_the_budget_admits_within_what_cpus_hold() {
        let limit = per_second(10_000, 1_000); // interval 100 us
        let cpus = 8u64;
        let chunk = u64::from(budget_chunk_size(&limit, cpus as u32));
        assert_eq!(chunk, 31);
        let mut credits = [BudgetCredit::default(); 8];
        let (mut tat, mut admitted, mut writes) = (0u64, 0u64, 0u64);
        let (mut exact_tat, mut exact) = (0u64, 0u64);
        let mut random = 0x2545_f491_4f6c_dd1du64;
        let mut now = NS_PER_SEC;
        let start = now;
        for index in 0..125_000u64 {
            // 25 000 arrivals every 200 us (5 000/s), then 100 000 every 50 us (20 000/s).
            now += if index < 25_000 { 200_000 } else { 50_000 };
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let credit = &mut credits[(random % cpus) as usize];
            let heavy = random & 1 << 40 != 0;
            if credit.spend(1) {
                admitted += 1;
            } else if let Some(next) = budget_chunk(tat, now, &limit, chunk, 1) {
                (tat, writes) = (next, writes + 1);
                credit.queries += chunk - 1;
                admitted += 1;
            } else if let Some(next) = budget_gcra(tat, now, &limit, u8::from(!heavy), 1) {
                (tat, writes) = (next, writes + 1);
                admitted += 1;
            }
            if let Some(next) = budget_gcra(exact_tat, now, &limit, u8::from(!heavy), 1) {
                exact_tat = next;
                exact += 1;
            }
            if index == 24_999 {
                assert_eq!(admitted, 25_000, "under the budget every query passes");
                assert!(writes <= 25_000 / chunk + cpus, "{writes} shared writes");
            }
        }
        let held: u64 = credits.iter().map(|credit| credit.queries).sum();
        let bound = 2 * limit.burst() + (now - start) / limit.interval_ns + 1;
        assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
        assert!(held <= cpus * (chunk - 1));
        let slack = cpus * (chunk - 1);
        assert!(
            admitted + slack >= exact && admitted <= exact + slack,
            "{admitted} vs {exact}"
        );
    }
}
