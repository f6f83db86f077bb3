//! `dns-xdp set`: a change to a running instance's configuration. The fields given are
//! validated (their ranges by clap, as `attach`'s are) and applied to the live `Config`
//! as one write; everything not given keeps its value.

use std::str::FromStr;

use anyhow::{Context as _, bail, ensure};
use dns_xdp_common::{
    Config, FLAG_BACKENDING, FLAG_BUDGET_SLIP, FLAG_DRY_RUN, FLAG_SANITY, Level, Limit,
};

use crate::settings::{
    Levels, MAX_PROOF_TTL, Rate, budget_limit, cap_limit, check_prefix_lengths, proof_ttl_ns,
};

/// A rate, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateOrOff {
    Off,
    On(Rate),
}

impl FromStr for RateOrOff {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            rate => rate.parse().map(Self::On),
        }
    }
}

impl RateOrOff {
    fn rate(self) -> Option<Rate> {
        match self {
            Self::Off => None,
            Self::On(rate) => Some(rate),
        }
    }
}

/// What `set` changes; `None` keeps the live value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigPatch {
    /// The per-source rate, or off.
    pub rate: Option<RateOrOff>,
    /// The per-source burst (at least 1). Alone, it keeps the live rate's exact interval.
    pub burst: Option<u32>,
    /// The per-source prefix lengths (0–32, 0–128).
    pub v4_prefix: Option<u8>,
    pub v6_prefix: Option<u8>,
    pub dry_run: Option<bool>,
    pub dns_sanity: Option<bool>,
    pub backending: Option<bool>,
    /// Allowed opcodes, as a bit set.
    pub opcodes: Option<u16>,
    pub slip: Option<u32>,
    pub slip_cap: Option<Rate>,
    pub slip_prefix_cap: Option<Rate>,
    pub sample: Option<u32>,
    pub sample_cap: Option<Rate>,
    /// The aggregate levels (explicit, or none: `auto` needs the start-up rate).
    pub levels: Option<Levels>,
    /// The server budget, or off, with its burst.
    pub budget: Option<RateOrOff>,
    pub budget_burst: Option<u32>,
    /// New DNS cookie secrets (the current one first); empty: stop checking cookies.
    pub cookie_secrets: Option<Vec<[u8; 16]>>,
    /// Seconds a proof lasts; 0: no proof is recorded.
    pub proof_ttl: Option<u64>,
    pub budget_slip: Option<bool>,
}

impl ConfigPatch {
    /// `config` with this patch applied, or what makes the patch invalid for it.
    pub fn apply(&self, config: &Config) -> anyhow::Result<Config> {
        let mut config = *config;
        let base = &mut config.levels[0];
        let burst = match self.burst {
            Some(0) => bail!("--burst must be at least 1"),
            Some(burst) => u64::from(burst),
            None => base.limit.burst().max(1),
        };
        base.limit = match self.rate {
            Some(RateOrOff::Off) => Limit::OFF,
            Some(RateOrOff::On(rate)) => Limit::new(rate.packets, rate.period_ns, burst)
                .with_context(|| {
                    format!("--rate {rate} with a burst of {burst} is out of range")
                })?,
            // Only the burst changes: keep the exact interval.
            None if base.limit.is_on() => {
                Limit::new(1, base.limit.interval_ns, burst).context("--burst out of range")?
            }
            None if self.burst.is_some() => {
                bail!("--burst needs a rate: the instance has none; pass --rate")
            }
            None => Limit::OFF,
        };
        let v4 = self.v4_prefix.unwrap_or(base.v4_prefix_len);
        let v6 = self.v6_prefix.unwrap_or(base.v6_prefix_len);
        check_prefix_lengths(v4, v6)?;
        *base = Level::new(v4, v6, base.limit);
        match &self.levels {
            Some(Levels::Auto) => {
                bail!("--levels auto needs the start-up --rate; give the levels explicitly")
            }
            Some(Levels::List(specs)) => {
                for (index, slot) in config.levels[1..].iter_mut().enumerate() {
                    *slot = match specs.get(index) {
                        Some(spec) => Level::new(
                            spec.v4_prefix,
                            spec.v6_prefix,
                            Limit::new(
                                spec.rate.packets,
                                spec.rate.period_ns,
                                u64::from(spec.burst),
                            )
                            .with_context(|| format!("--levels {spec}: out of range"))?,
                        ),
                        None => Level::default(),
                    };
                }
            }
            Some(Levels::None) => config.levels[1..].fill(Level::default()),
            None => {}
        }
        for (on, flag) in [
            (self.dry_run, FLAG_DRY_RUN),
            (self.dns_sanity, FLAG_SANITY),
            (self.backending, FLAG_BACKENDING),
            (self.budget_slip, FLAG_BUDGET_SLIP),
        ] {
            match on {
                Some(true) => config.flags |= flag,
                Some(false) => config.flags &= !flag,
                None => {}
            }
        }
        if let Some(opcodes) = self.opcodes {
            config.allowed_opcodes = opcodes;
        }
        if let Some(slip) = self.slip {
            config.slip = slip;
        }
        if let Some(cap) = self.slip_cap {
            config.slip_cap = cap_limit(cap)?;
        }
        if let Some(cap) = self.slip_prefix_cap {
            config.slip_prefix_cap = cap_limit(cap)?;
        }
        if let Some(secrets) = &self.cookie_secrets {
            config.cookies = crate::cookies::kernel_secrets(secrets);
        }
        if let Some(ttl) = self.proof_ttl {
            ensure!(
                ttl <= MAX_PROOF_TTL,
                "--proof-ttl {ttl}: at most {MAX_PROOF_TTL} seconds (a week)"
            );
            config.proof_ttl_ns = proof_ttl_ns(ttl);
        }
        if let Some(sample) = self.sample {
            config.sample_every = sample;
        }
        if let Some(cap) = self.sample_cap {
            config.sample_cap = cap_limit(cap)?;
        }
        match (self.budget, self.budget_burst) {
            (Some(budget), burst) => config.budget = budget_limit(budget.rate(), burst)?,
            (None, Some(_)) => bail!("--budget-burst needs --budget"),
            (None, None) => {}
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use dns_xdp_common::{MAX_LEVELS, NS_PER_SEC};

    use super::*;
    use crate::settings::Settings;

    fn live() -> Config {
        Settings {
            rate: Some("10/s".parse().unwrap()),
            burst: 20,
            ..Settings::default()
        }
        .config()
        .unwrap()
    }

    fn bytes(config: &Config) -> Vec<u8> {
        bytemuck::bytes_of(config).to_vec()
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        assert_eq!(
            bytes(&ConfigPatch::default().apply(&live()).unwrap()),
            bytes(&live())
        );
    }

    #[test]
    fn a_burst_alone_keeps_the_exact_interval_and_a_rate_alone_the_burst() {
        let burst = ConfigPatch {
            burst: Some(50),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        let limit = burst.levels[0].limit;
        assert_eq!(limit.interval_ns, NS_PER_SEC / 10);
        assert_eq!(limit.burst(), 50);
        let rate = ConfigPatch {
            rate: Some("100/s".parse().unwrap()),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert_eq!(rate.levels[0].limit.interval_ns, NS_PER_SEC / 100);
        assert_eq!(rate.levels[0].limit.burst(), 20);
        // The aggregate levels the start-up rate derived stay as they were.
        assert_eq!(rate.levels[1..], live().levels[1..]);
    }

    #[test]
    fn off_switches_off_and_a_burst_without_any_rate_is_refused() {
        let off = ConfigPatch {
            rate: Some(RateOrOff::Off),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert!(!off.levels[0].limit.is_on());
        let error = ConfigPatch {
            burst: Some(5),
            ..ConfigPatch::default()
        }
        .apply(&off)
        .err()
        .expect("refused");
        assert!(
            error.to_string().contains("--burst needs a rate"),
            "{error}"
        );
    }

    #[test]
    fn levels_replace_the_aggregates_and_auto_is_refused() {
        let none = ConfigPatch {
            levels: Some(Levels::None),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert!(none.levels[1..].iter().all(|level| !level.limit.is_on()));
        assert_eq!(none.levels[0], live().levels[0]);
        let explicit = ConfigPatch {
            levels: Some(crate::settings::parse_levels("24/48:100/s:200").unwrap()),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert_eq!(explicit.levels[1].v4_prefix_len, 24);
        assert_eq!(explicit.levels[1].limit.burst(), 200);
        assert!((2..MAX_LEVELS).all(|index| !explicit.levels[index].limit.is_on()));
        let auto = ConfigPatch {
            levels: Some(Levels::Auto),
            ..ConfigPatch::default()
        };
        assert!(auto.apply(&live()).is_err());
    }

    #[test]
    fn proof_lifetime_and_budget_slip() {
        let patched = ConfigPatch {
            proof_ttl: Some(60),
            budget_slip: Some(false),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert_eq!(patched.proof_ttl_ns, 60 * dns_xdp_common::NS_PER_SEC);
        assert!(!patched.budget_slip());
        assert_eq!(patched.levels, live().levels);
        let too_long = ConfigPatch {
            proof_ttl: Some(8 * 24 * 3600),
            ..ConfigPatch::default()
        };
        let Err(error) = too_long.apply(&live()) else {
            panic!("a proof lifetime over a week was accepted");
        };
        assert!(error.to_string().contains("--proof-ttl 691200"), "{error}");
    }

    #[test]
    fn flags_budget_and_slip() {
        let patched = ConfigPatch {
            dry_run: Some(true),
            backending: Some(false),
            slip: Some(2),
            slip_cap: Some("100/s".parse().unwrap()),
            budget: Some("1000/s".parse().unwrap()),
            budget_burst: Some(50),
            ..ConfigPatch::default()
        }
        .apply(&live())
        .unwrap();
        assert!(patched.dry_run());
        assert!(!patched.backending());
        assert_eq!(patched.slip, 2);
        assert_eq!(patched.slip_cap.burst(), 100);
        assert_eq!(patched.budget.burst(), 50);
        let off = ConfigPatch {
            budget: Some(RateOrOff::Off),
            ..ConfigPatch::default()
        }
        .apply(&patched)
        .unwrap();
        assert!(!off.budget.is_on());
        let orphan = ConfigPatch {
            budget_burst: Some(5),
            ..ConfigPatch::default()
        };
        assert!(orphan.apply(&live()).is_err());
    }
}
