//! What the operator asks for, validated, and turned into the kernel's `Config` and lists.

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{Context as _, bail, ensure};
use dns_xdp_common::{
    Config, DEFAULT_OPCODES, DEFAULT_TABLE_SIZE, FLAG_DRY_RUN, FLAG_LIST_V4, FLAG_LIST_V6,
    FLAG_SANITY, Limit, MAX_LIST_ENTRIES, NS_PER_SEC, OPCODE_NOTIFY, OPCODE_QUERY, OPCODE_UPDATE,
    PortSet, prefix_mask,
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
                "a rate of 0 would refuse every query; leave --rate out to disable the limit"
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
    /// Opcodes allowed in queries, as a bit set (`parse_opcodes`).
    pub opcodes: u16,
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
            opcodes: DEFAULT_OPCODES,
        }
    }
}

impl Settings {
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
        ensure!(
            self.v4_prefix <= 32,
            "--v4-prefix {}: an IPv4 prefix has 0 to 32 bits",
            self.v4_prefix
        );
        ensure!(
            self.v6_prefix <= 128,
            "--v6-prefix {}: an IPv6 prefix has 0 to 128 bits",
            self.v6_prefix
        );
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
        Ok(Config {
            dns_ports,
            limit,
            v6_mask: prefix_mask(self.v6_prefix),
            v4_mask: prefix_mask(self.v4_prefix),
            v4_prefix_len: self.v4_prefix,
            v6_prefix_len: self.v6_prefix,
            flags: self.flags(),
            allowed_opcodes: self.opcodes,
            _reserved: [0; 6],
        })
    }

    fn flags(&self) -> u16 {
        let listed = |v4: bool| {
            self.allow
                .iter()
                .chain(&self.deny)
                .any(|net| matches!(net, IpNet::V4(_)) == v4)
        };
        let mut flags = 0;
        for (on, flag) in [
            (self.dry_run, FLAG_DRY_RUN),
            (self.dns_sanity, FLAG_SANITY),
            (listed(true), FLAG_LIST_V4),
            (listed(false), FLAG_LIST_V6),
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
        assert_eq!(config.limit.interval_ns, 100_000_000);
        assert_eq!(config.limit.burst(), 20);
        assert_eq!(config.v4_mask, [255, 255, 255, 0]);
        assert_eq!(config.v6_mask[5..7], [255, 0]);
        assert!(config.dry_run());
        assert!(!config.has_list(false) && !config.has_list(true));
        let listed = Settings {
            deny: vec![parse_cidr("2001:db8::/32").unwrap()],
            ..Settings::default()
        };
        let listed = listed.config().unwrap();
        assert!(!listed.has_list(false) && listed.has_list(true));
        assert!(config.dns_ports.contains(853) && !config.dns_ports.contains(54));
        assert!(!Settings::default().config().unwrap().limit.is_on());
    }
}
