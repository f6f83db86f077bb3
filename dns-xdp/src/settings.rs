//! What the operator asks for, validated, and turned into the kernel's `Config` and lists.

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{Context as _, bail, ensure};
use dns_xdp_common::{
    Config, DEFAULT_OPCODES, DEFAULT_PROOF_TTL_S, DEFAULT_TABLE_SIZE, FLAG_BACKENDING,
    FLAG_BUDGET_SLIP, FLAG_DRY_RUN, FLAG_SANITY, Family, Level, Limit, MAX_LEVELS,
    MAX_LIST_ENTRIES, NS_PER_SEC, OPCODE_NOTIFY, OPCODE_QUERY, OPCODE_UPDATE, PortSet,
    budget_chunk_size, list_flag,
};
pub use ipnet::IpNet;

/// Default burst, as iptables hashlimit's `--hashlimit-burst`.
pub const DEFAULT_BURST: u32 = 5;
pub const DEFAULT_V4_PREFIX: u8 = 32;
pub const DEFAULT_V6_PREFIX: u8 = 64;
/// Largest `--table-size`.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// A rate: `packets` per `period_ns`, written `N`, `N/s`, `N/min` or `N/hour`
/// (hashlimit's `/sec`, `/minute`, `/hour` spellings too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub packets: u64,
    pub period_ns: u64,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (count, unit) = text.split_once('/').unwrap_or((text, "s"));
        let period_ns = match unit {
            "s" | "sec" | "second" => NS_PER_SEC,
            "m" | "min" | "minute" => 60 * NS_PER_SEC,
            "h" | "hour" => 3600 * NS_PER_SEC,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?}: use /s, /min or /hour"
                ));
            }
        };
        let packets: u64 = count
            .parse()
            .map_err(|_| format!("{text:?} is not a rate (e.g. 10, 10/s, 600/min)"))?;
        if packets == 0 {
            return Err(
                "a rate of 0 would refuse every query; leave the option out to disable the limit"
                    .into(),
            );
        }
        if period_ns / packets == 0 {
            return Err(format!("{text:?} is above 1000000000 packets/s"));
        }
        Ok(Self { packets, period_ns })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_ns {
            NS_PER_SEC => "s",
            period if period == 60 * NS_PER_SEC => "min",
            _ => "hour",
        };
        write!(f, "{}/{unit}", self.packets)
    }
}

/// An aggregate prefix level: `V4/V6:RATE:BURST`, e.g. `24/48:200/s:400`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub rate: Rate,
    pub burst: u32,
}

impl FromStr for LevelSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("{text:?} is not a level: V4/V6:RATE:BURST, e.g. 24/48:200/s:400");
        let mut parts = text.splitn(3, ':');
        let (Some(prefixes), Some(rate), Some(burst)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        // The rate may carry its own unit ("200/s"), so the burst is the last field.
        let (rate, burst) = match burst.rsplit_once(':') {
            Some((unit_rest, burst)) => (format!("{rate}:{unit_rest}"), burst),
            None => (rate.to_owned(), burst),
        };
        let (v4, v6) = prefixes.split_once('/').ok_or_else(usage)?;
        Ok(Self {
            v4_prefix: v4.parse().map_err(|_| usage())?,
            v6_prefix: v6.parse().map_err(|_| usage())?,
            rate: rate.parse()?,
            burst: burst.parse().map_err(|_| usage())?,
        })
    }
}

impl fmt::Display for LevelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}:{}",
            self.v4_prefix, self.v6_prefix, self.rate, self.burst
        )
    }
}

/// The aggregate levels above the per-source one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Levels {
    /// With a --rate: /24 and /48 at 4 times the rate and burst, /16 and /32 at 32 times.
    #[default]
    Auto,
    None,
    List(Vec<LevelSpec>),
}

/// Multipliers of the per-source rate and burst for the automatic aggregate levels,
/// with their prefixes: a /24 rarely holds more than a few busy resolvers, a /16 is a
/// provider's block.
const AUTO_LEVELS: [(u8, u8, u64); 2] = [(24, 48, 4), (16, 32, 32)];

/// Parses `auto`, `none`, or up to three comma-separated levels.
pub fn parse_levels(text: &str) -> Result<Levels, String> {
    match text.trim() {
        "auto" => Ok(Levels::Auto),
        "none" | "" => Ok(Levels::None),
        list => {
            let levels = list
                .split(',')
                .map(|level| level.trim().parse())
                .collect::<Result<Vec<LevelSpec>, _>>()?;
            if levels.len() > MAX_LEVELS - 1 {
                return Err(format!("at most {} aggregate levels", MAX_LEVELS - 1));
            }
            Ok(Levels::List(levels))
        }
    }
}

/// Parses a CIDR, or a bare address as a single-host prefix. Host bits must be clear.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "{text:?} is not a CIDR (e.g. 198.51.100.0/24 or 2001:db8::/48)"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{text} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Everything `attach` configures.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ports: Vec<u16>,
    /// Per-source query rate; `None`: no rate limit.
    pub rate: Option<Rate>,
    pub burst: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub table_size: u32,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub dry_run: bool,
    /// Keep DNS on the attached interface out of conntrack (nftables NOTRACK rules).
    pub conntrack_bypass: bool,
    /// Refuse UDP to a DNS port that cannot be a query (a response, a short or
    /// multi-question message, a disallowed opcode).
    pub dns_sanity: bool,
    /// Admit answers only to queries and TCP connections this host sent; off, drop
    /// every answer (`FLAG_BACKENDING`).
    pub backending: bool,
    /// Opcodes allowed in queries, as a bit set (`parse_opcodes`).
    pub opcodes: u16,
    /// Aggregate prefix levels checked after the per-source one.
    pub levels: Levels,
    /// Answer one in `slip` rate-limited UDP queries with a truncated reply; 0: never.
    pub slip: u32,
    /// Queries/s the server behind can answer; `None`: no budget.
    pub budget: Option<Rate>,
    /// The budget's burst; `None`: a tenth of a second's worth.
    pub budget_burst: Option<u32>,
    /// Slipped replies per second to all destinations together (burst: one second's).
    pub slip_cap: Rate,
    /// Slipped replies per second to one destination /24 or /48 (burst: one second's).
    pub slip_prefix_cap: Rate,
    /// Sample one in `sample` queries of each decision; 0: off.
    pub sample: u32,
    /// Samples per second, all CPUs together (burst: one second's).
    pub sample_cap: Rate,
    /// DNS cookie secrets (`cookies::parse_secrets`), the current one first; none: no
    /// cookie is checked.
    pub cookie_secrets: Vec<[u8; 16]>,
    /// Seconds a source stays proven (a completed TCP handshake, a valid cookie) after
    /// its last proof; 0: no proof is recorded.
    pub proof_ttl: u64,
    /// Slip UDP queries the budget sheds from unproven sources (`FLAG_BUDGET_SLIP`).
    pub budget_slip: bool,
}

/// The longest `proof_ttl`: a week.
pub const MAX_PROOF_TTL: u64 = 7 * 24 * 3600;

/// The kernel form of `proof_ttl` (seconds).
pub fn proof_ttl_ns(seconds: u64) -> u64 {
    seconds.saturating_mul(NS_PER_SEC)
}

/// Default `sample`: one in 100 queries of each decision, enough to see what a flood
/// asks within a second, at no cost worth measuring below the cap.
pub const DEFAULT_SAMPLE: u32 = 100;
/// Default `sample_cap`: what a reader decodes without effort, and a fixed, small cost
/// however large the flood (see docs/benchmarks.md).
pub const DEFAULT_SAMPLE_CAP: Rate = Rate {
    packets: 1000,
    period_ns: NS_PER_SEC,
};

/// Default `slip_cap`: far more than real clients sent to TCP need, far too little
/// for a reflector.
pub const DEFAULT_SLIP_CAP: Rate = Rate {
    packets: 1000,
    period_ns: NS_PER_SEC,
};
/// Default `slip_prefix_cap`: each real client needs one truncated reply before it
/// retries over TCP.
pub const DEFAULT_SLIP_PREFIX_CAP: Rate = Rate {
    packets: 10,
    period_ns: NS_PER_SEC,
};

/// Checks the prefix lengths that make a source: 0 to 32 bits (IPv4), 0 to 128 (IPv6).
pub fn check_prefix_lengths(v4: u8, v6: u8) -> anyhow::Result<()> {
    ensure!(
        v4 <= 32,
        "--v4-prefix {v4}: an IPv4 prefix has 0 to 32 bits"
    );
    ensure!(
        v6 <= 128,
        "--v6-prefix {v6}: an IPv6 prefix has 0 to 128 bits"
    );
    Ok(())
}

/// The kernel form of a cap (slips, samples): `rate` with a burst of one second's worth
/// (at least 1).
pub fn cap_limit(rate: Rate) -> anyhow::Result<Limit> {
    let burst = packets_in(rate, NS_PER_SEC);
    Limit::new(rate.packets, rate.period_ns, burst)
        .with_context(|| format!("slip cap {rate} out of range"))
}

/// How many packets `rate` allows in `window_ns`, at least 1.
fn packets_in(rate: Rate, window_ns: u64) -> u64 {
    (u128::from(rate.packets) * u128::from(window_ns) / u128::from(rate.period_ns)).max(1) as u64
}

/// The CPUs the kernel may run the programs on (possible, not only online: a CPU brought
/// online later holds a credit too); 1 if it cannot be read.
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |cpus| cpus as u32)
}

/// The kernel form of a server budget (`Limit::OFF` without one). The burst defaults to
/// a tenth of a second of the budget: enough for arrivals to bunch up, too little to
/// let a flood through before the budget bites.
pub fn budget_limit(budget: Option<Rate>, burst: Option<u32>) -> anyhow::Result<Limit> {
    let Some(rate) = budget else {
        return Ok(Limit::OFF);
    };
    let burst = burst.map_or_else(|| packets_in(rate, NS_PER_SEC / 10), u64::from);
    ensure!(burst >= 1, "--budget-burst must be at least 1");
    Limit::new(rate.packets, rate.period_ns, burst)
        .with_context(|| format!("--budget {rate} with a burst of {burst} is out of range"))
}

/// Parses `query,notify,update` (names or numbers 0-15) into a bit set.
pub fn parse_opcodes(text: &str) -> Result<u16, String> {
    let mut set = 0u16;
    for name in text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let opcode = match name.to_ascii_lowercase().as_str() {
            "query" => OPCODE_QUERY,
            "notify" => OPCODE_NOTIFY,
            "update" => OPCODE_UPDATE,
            number => match number.parse::<u8>() {
                Ok(opcode) if opcode < 16 => opcode,
                _ => {
                    return Err(format!(
                        "{name:?} is not an opcode (query, notify, update, or 0-15)"
                    ));
                }
            },
        };
        set |= 1 << opcode;
    }
    if set == 0 {
        return Err("at least one opcode must be allowed".into());
    }
    Ok(set)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ports: vec![dns_xdp_common::DNS_PORT],
            rate: None,
            burst: DEFAULT_BURST,
            v4_prefix: DEFAULT_V4_PREFIX,
            v6_prefix: DEFAULT_V6_PREFIX,
            table_size: DEFAULT_TABLE_SIZE,
            allow: Vec::new(),
            deny: Vec::new(),
            dry_run: false,
            conntrack_bypass: true,
            dns_sanity: true,
            backending: true,
            opcodes: DEFAULT_OPCODES,
            levels: Levels::Auto,
            slip: 0,
            budget: None,
            slip_cap: DEFAULT_SLIP_CAP,
            slip_prefix_cap: DEFAULT_SLIP_PREFIX_CAP,
            budget_burst: None,
            sample: DEFAULT_SAMPLE,
            sample_cap: DEFAULT_SAMPLE_CAP,
            cookie_secrets: Vec::new(),
            proof_ttl: DEFAULT_PROOF_TTL_S,
            budget_slip: true,
        }
    }
}

impl Settings {
    /// The source table's slots for `table_size`: rounded up to whole lines.
    pub fn table_slots(&self) -> u32 {
        dns_xdp_common::source_lines(self.table_size) * dns_xdp_common::SOURCE_WAYS as u32
    }

    /// Checks the settings together; the message names the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.ports.is_empty(),
            "--port: at least one DNS port is needed"
        );
        ensure!(
            self.ports.iter().all(|&port| port != 0),
            "--port 0 is not a port"
        );
        ensure!(self.burst >= 1, "--burst must be at least 1");
        check_prefix_lengths(self.v4_prefix, self.v6_prefix)?;
        ensure!(
            (1..=MAX_TABLE_SIZE).contains(&self.table_size),
            "--table-size {}: between 1 and {MAX_TABLE_SIZE} entries",
            self.table_size
        );
        if let Some(rate) = self.rate {
            Limit::new(rate.packets, rate.period_ns, u64::from(self.burst)).with_context(|| {
                format!("--rate {rate} with --burst {} is out of range", self.burst)
            })?;
        }
        ensure!(
            self.budget.is_some() || self.budget_burst.is_none(),
            "--budget-burst needs --budget"
        );
        budget_limit(self.budget, self.budget_burst)?;
        ensure!(
            self.proof_ttl <= MAX_PROOF_TTL,
            "--proof-ttl {}: at most {MAX_PROOF_TTL} seconds (a week)",
            self.proof_ttl
        );
        for level in self.aggregate_levels() {
            ensure!(
                level.v4_prefix <= 32 && level.v6_prefix <= 128,
                "--levels {level}: prefixes have 0 to 32 (IPv4) and 0 to 128 (IPv6) bits"
            );
            ensure!(
                level.burst >= 1,
                "--levels {level}: the burst must be at least 1"
            );
            Limit::new(
                level.rate.packets,
                level.rate.period_ns,
                u64::from(level.burst),
            )
            .with_context(|| format!("--levels {level}: rate and burst out of range"))?;
        }
        for (flag, list) in [("--allow", &self.allow), ("--deny", &self.deny)] {
            for family_v4 in [true, false] {
                let count = list
                    .iter()
                    .filter(|net| matches!(net, IpNet::V4(_)) == family_v4)
                    .count();
                ensure!(
                    count <= MAX_LIST_ENTRIES as usize,
                    "{flag}: more than {MAX_LIST_ENTRIES} IPv{} prefixes",
                    if family_v4 { 4 } else { 6 }
                );
            }
        }
        if let Some(both) = self.allow.iter().find(|net| self.deny.contains(net)) {
            bail!("{both} is in both --allow and --deny; a prefix can be in one list only");
        }
        Ok(())
    }

    /// The aggregate levels in force (`Auto` derives them from the per-source limit).
    pub fn aggregate_levels(&self) -> Vec<LevelSpec> {
        match (&self.levels, self.rate) {
            (Levels::List(levels), _) => levels.clone(),
            (Levels::Auto, Some(rate)) => AUTO_LEVELS
                .iter()
                .map(|&(v4_prefix, v6_prefix, times)| LevelSpec {
                    v4_prefix,
                    v6_prefix,
                    rate: Rate {
                        packets: rate.packets.saturating_mul(times),
                        period_ns: rate.period_ns,
                    },
                    burst: self.burst.saturating_mul(times as u32),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The kernel configuration; call `validate` first.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.validate()?;
        let mut dns_ports = PortSet::EMPTY;
        for &port in &self.ports {
            dns_ports.insert(port);
        }
        let limit = match self.rate {
            Some(rate) => Limit::new(rate.packets, rate.period_ns, u64::from(self.burst))
                .context("rate out of range")?,
            None => Limit::OFF,
        };
        let mut levels = [Level::default(); MAX_LEVELS];
        levels[0] = Level::new(self.v4_prefix, self.v6_prefix, limit);
        for (slot, spec) in levels[1..].iter_mut().zip(self.aggregate_levels()) {
            let limit = Limit::new(
                spec.rate.packets,
                spec.rate.period_ns,
                u64::from(spec.burst),
            )
            .context("level out of range")?;
            *slot = Level::new(spec.v4_prefix, spec.v6_prefix, limit);
        }
        let budget = budget_limit(self.budget, self.budget_burst)?;
        Ok(Config {
            dns_ports,
            levels,
            flags: self.flags(),
            allowed_opcodes: self.opcodes,
            slip: self.slip,
            budget_chunk: budget_chunk_size(&budget, possible_cpus()),
            budget,
            slip_cap: cap_limit(self.slip_cap)?,
            slip_prefix_cap: cap_limit(self.slip_prefix_cap)?,
            sample_cap: cap_limit(self.sample_cap)?,
            sample_every: self.sample,
            generation: 0,
            cookies: crate::cookies::kernel_secrets(&self.cookie_secrets),
            proof_ttl_ns: proof_ttl_ns(self.proof_ttl),
        })
    }

    /// Choices that are valid but probably not what the operator wants, one warning each.
    pub fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        if !self.cookie_secrets.is_empty() && self.budget.is_none() {
            advice.push(
                "--cookie-secrets without --budget: a query with a valid cookie passes every \
                 prefix level, so one real client that sends cookies is held by nothing; \
                 set --budget to the queries/s the server can answer"
                    .to_owned(),
            );
        }
        if self.budget.is_some() && self.proof_ttl == 0 && self.cookie_secrets.is_empty() {
            advice.push(
                "--budget with --proof-ttl 0 and no --cookie-secrets: over budget, only TCP \
                 queries count as proven, and a flood spoofed across the address space \
                 shares the rest with real UDP clients"
                    .to_owned(),
            );
        }
        advice
    }

    fn flags(&self) -> u16 {
        let listed = |family: Family| {
            self.allow
                .iter()
                .chain(&self.deny)
                .any(|net| Family::of(&net.addr()) == family)
        };
        let mut flags = 0;
        for (on, flag) in [
            (self.dry_run, FLAG_DRY_RUN),
            (self.dns_sanity, FLAG_SANITY),
            (self.backending, FLAG_BACKENDING),
            (self.budget_slip, FLAG_BUDGET_SLIP),
            (listed(Family::V4), list_flag(Family::V4)),
            (listed(Family::V6), list_flag(Family::V6)),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_hashlimit_units() {
        assert_eq!(
            "10".parse(),
            Ok(Rate {
                packets: 10,
                period_ns: NS_PER_SEC
            })
        );
        assert_eq!(
            "10/sec".parse(),
            Ok(Rate {
                packets: 10,
                period_ns: NS_PER_SEC
            })
        );
        assert_eq!(
            "600/min".parse(),
            Ok(Rate {
                packets: 600,
                period_ns: 60 * NS_PER_SEC
            })
        );
        assert_eq!("5/hour".parse::<Rate>().unwrap().to_string(), "5/hour");
        assert!("0".parse::<Rate>().unwrap_err().contains("rate of 0"));
        assert!(
            "2000000000/s"
                .parse::<Rate>()
                .unwrap_err()
                .contains("above")
        );
        assert!(
            "10/fortnight"
                .parse::<Rate>()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!("ten".parse::<Rate>().unwrap_err().contains("not a rate"));
    }

    #[test]
    fn levels_parse_and_print() {
        let level: LevelSpec = "24/48:200/s:400".parse().unwrap();
        assert_eq!(
            (level.v4_prefix, level.v6_prefix, level.burst),
            (24, 48, 400)
        );
        assert_eq!(level.to_string(), "24/48:200/s:400");
        assert_eq!(
            "16/32:1000:2000"
                .parse::<LevelSpec>()
                .unwrap()
                .rate
                .to_string(),
            "1000/s"
        );
        assert!(
            "24:200:400"
                .parse::<LevelSpec>()
                .unwrap_err()
                .contains("not a level")
        );
        assert_eq!(parse_levels("none"), Ok(Levels::None));
        assert!(
            parse_levels("24/48:1:1,20/40:1:1,16/32:1:1,8/24:1:1")
                .unwrap_err()
                .contains("at most 3")
        );
        let settings = Settings {
            rate: Some("10/s".parse().unwrap()),
            levels: parse_levels("20/40:100/s:50").unwrap(),
            ..Settings::default()
        };
        let config = settings.config().unwrap();
        assert_eq!(config.levels[1].v4_prefix_len, 20);
        assert!(!config.levels[2].limit.is_on());
        let bad = Settings {
            levels: parse_levels("33/48:1/s:1").unwrap(),
            ..settings
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--levels 33/48")
        );
    }

    #[test]
    fn opcodes_parse_by_name_or_number() {
        assert_eq!(parse_opcodes("query"), Ok(1));
        assert_eq!(parse_opcodes("query,notify,update"), Ok(DEFAULT_OPCODES));
        assert_eq!(parse_opcodes("0, 15"), Ok(1 | 1 << 15));
        assert!(parse_opcodes("16").unwrap_err().contains("not an opcode"));
        assert!(parse_opcodes("").unwrap_err().contains("at least one"));
    }

    #[test]
    fn cidrs_parse_and_host_bits_are_refused() {
        assert_eq!(
            parse_cidr("198.51.100.0/24").unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_cidr("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        assert!(
            parse_cidr("198.51.100.7/24")
                .unwrap_err()
                .contains("did you mean 198.51.100.0/24")
        );
        assert!(
            parse_cidr("10.0.0.300/8")
                .unwrap_err()
                .contains("not a CIDR")
        );
        assert!(
            parse_cidr("10.0.0.0/33")
                .unwrap_err()
                .contains("not a CIDR")
        );
    }

    #[test]
    fn validation_names_the_flag() {
        let check = |edit: fn(&mut Settings)| {
            let mut settings = Settings::default();
            edit(&mut settings);
            settings.config().map(|_| ()).unwrap_err().to_string()
        };
        assert!(check(|s| s.v4_prefix = 33).contains("--v4-prefix 33"));
        assert!(check(|s| s.v6_prefix = 129).contains("--v6-prefix 129"));
        assert!(check(|s| s.burst = 0).contains("--burst"));
        assert!(check(|s| s.table_size = 0).contains("--table-size 0"));
        assert!(
            check(|s| {
                s.rate = Some("1".parse().unwrap());
                s.burst = u32::MAX;
                s.rate = Some(Rate {
                    packets: 1,
                    period_ns: 3600 * NS_PER_SEC,
                });
            })
            .contains("out of range")
        );
        assert!(
            check(|s| {
                let net = parse_cidr("198.51.100.0/24").unwrap();
                s.allow.push(net);
                s.deny.push(net);
            })
            .contains("in both --allow and --deny")
        );
    }

    #[test]
    fn proofs_are_bounded_and_risky_combinations_are_advised() {
        let week = Settings {
            proof_ttl: MAX_PROOF_TTL + 1,
            ..Settings::default()
        };
        assert!(
            week.validate()
                .unwrap_err()
                .to_string()
                .contains("--proof-ttl 604801")
        );
        assert!(Settings::default().advice().is_empty());
        let cookies_alone = Settings {
            cookie_secrets: vec![[7; 16]],
            ..Settings::default()
        };
        assert!(cookies_alone.advice()[0].contains("--cookie-secrets without --budget"));
        let blind_budget = Settings {
            budget: Some("1000/s".parse().unwrap()),
            proof_ttl: 0,
            ..Settings::default()
        };
        assert!(blind_budget.advice()[0].contains("--proof-ttl 0"));
        let config = Settings::default().config().unwrap();
        assert_eq!(config.proof_ttl_ns, 600 * NS_PER_SEC);
        assert!(config.budget_slip());
    }

    #[test]
    fn config_carries_the_limit_masks_and_flags() {
        let settings = Settings {
            rate: Some("10/s".parse().unwrap()),
            burst: 20,
            v4_prefix: 24,
            v6_prefix: 48,
            dry_run: true,
            ports: vec![53, 853],
            ..Settings::default()
        };
        let config = settings.config().unwrap();
        let base = &config.levels[0];
        assert_eq!(base.limit.interval_ns, 100_000_000);
        assert_eq!(base.limit.burst(), 20);
        assert_eq!(base.v4_mask, [255, 255, 255, 0]);
        assert_eq!(base.v6_mask[5..7], [255, 0]);
        // Automatic aggregate levels: /24 and /48 at 4x, /16 and /32 at 32x.
        assert_eq!(
            (
                config.levels[1].v4_prefix_len,
                config.levels[1].v6_prefix_len
            ),
            (24, 48)
        );
        assert_eq!(config.levels[1].limit.burst(), 80);
        assert_eq!(config.levels[2].limit.interval_ns, 100_000_000 / 32);
        assert!(!config.levels[3].limit.is_on());
        assert!(config.dry_run());
        assert!(!config.has_list(Family::V4) && !config.has_list(Family::V6));
        let listed = Settings {
            deny: vec![parse_cidr("2001:db8::/32").unwrap()],
            ..Settings::default()
        };
        let listed = listed.config().unwrap();
        assert!(!listed.has_list(Family::V4) && listed.has_list(Family::V6));
        assert!(config.dns_ports.contains(853) && !config.dns_ports.contains(54));
        assert!(!Settings::default().config().unwrap().limited());
    }
}
