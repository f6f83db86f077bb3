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

/// Server budget admission: a GCRA at the budget's rate with two tolerances. A heavy
/// query conforms while the budget's `tat` runs at most the burst tolerance ahead of
/// now; a light one while it runs at most twice that plus one interval, a reserve of
/// one more burst that only light queries can draw. Returns the new `tat`, or `None`
/// if the query is to be shed.
///
/// Under sustained overload the admitted total is the budget's rate: light queries
/// are served first and heavy ones get what light ones leave; with only light (or only
/// heavy) queries it is first come, first served, so each source is shed in proportion
/// to what it sends.
#[inline(always)]
pub const fn budget_gcra(tat: u64, now: u64, limit: &Limit, heavy: bool, cost: u64) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    let tolerance = if heavy {
        limit.tolerance_ns
    } else {
        limit.tolerance_ns * 2 + limit.interval_ns
    };
    if tat - now > tolerance {
        None
    } else {
        Some(tat + limit.charge_ns(cost))
    }
}

/// A limit of `rate` per second with bursts of `burst`, for tests.
#[cfg(test)]
pub(crate) fn per_second(rate: u64, burst: u64) -> Limit {
    Limit::new(rate, NS_PER_SEC, burst).unwrap()
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
                if let Some(next) = budget_gcra(tat, now, limit, heavy, 1) {
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
            if let Some(next) = budget_gcra(tat, now, &limit, true, 1) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100 + 1000 - 1);
    }
}
