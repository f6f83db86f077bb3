//! The options of a running instance, from the command line and from a TOML file (the
//! same names, kebab-case), the command line winning.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    Mode,
    programs::DEFAULT_PIN_ROOT,
    settings::{IpNet, Levels, Rate, Settings, parse_cidr, parse_levels, parse_opcodes},
};

/// Where metrics are served unless told otherwise: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9553";
/// Sources named in reports and metrics unless told otherwise.
pub const DEFAULT_TOP: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    Auto,
    Native,
    Skb,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Native => Mode::Native,
            ModeArg::Skb => Mode::Skb,
        }
    }
}

pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.01..=86_400.0).contains(&seconds) {
        return Err(format!(
            "{text:?}: the interval must be between 0.01 and 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `off`, or an address to serve metrics on.
pub fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|addr| MetricsAddr(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address:port (e.g. 127.0.0.1:9553) or `off`"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn from_text<'de, D, T>(
    deserializer: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)
}

fn rate<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Rate>, D::Error> {
    // A bare number in TOML is a rate per second.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Number(u64),
        Text(String),
    }
    let text = match Text::deserialize(deserializer)? {
        Text::Number(number) => number.to_string(),
        Text::Text(text) => text,
    };
    text.parse().map(Some).map_err(D::Error::custom)
}

fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_cidr(text).map_err(D::Error::custom))
        .collect()
}

fn opcodes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    from_text(deserializer, parse_opcodes).map(Some)
}

fn levels<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Levels>, D::Error> {
    from_text(deserializer, parse_levels).map(Some)
}

fn interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    parse_interval(&seconds.to_string())
        .map(Some)
        .map_err(D::Error::custom)
}

fn metrics_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MetricsAddr>, D::Error> {
    from_text(deserializer, parse_metrics_addr).map(Some)
}

/// Every option of `attach` and `run`. On the command line unset means "not given"; in
/// a file, a missing key. Defaults apply after merging.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// Interface to attach to.
    #[arg(long, short)]
    pub iface: Option<String>,
    /// XDP attach mode: native in the driver, generic (skb), or let the kernel pick [default: auto].
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// A port that carries DNS (repeat for several) [default: 53].
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(default, rename = "ports")]
    pub ports: Vec<u16>,
    /// Per-source query rate: N, N/s, N/min or N/hour (hashlimit's --hashlimit-above).
    /// Without it, queries are not rate limited.
    #[arg(long, value_name = "RATE")]
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<Rate>,
    /// Queries a source may send at once before the rate applies (hashlimit's
    /// --hashlimit-burst) [default: 5].
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// IPv4 sources share a bucket per prefix of this length (hashlimit's
    /// --hashlimit-srcmask) [default: 32].
    #[arg(long, value_name = "BITS")]
    pub v4_prefix: Option<u8>,
    /// IPv6 sources share a bucket per prefix of this length [default: 64].
    #[arg(long, value_name = "BITS")]
    pub v6_prefix: Option<u8>,
    /// Source prefixes tracked at once; when full, the least recently seen makes room
    /// [default: 262144].
    #[arg(long, value_name = "ENTRIES")]
    pub table_size: Option<u32>,
    /// Never limit queries from this prefix (repeatable). The longest matching prefix of
    /// --allow and --deny decides.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default, deserialize_with = "cidrs")]
    pub allow: Vec<IpNet>,
    /// Always drop queries from this prefix (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    #[serde(default, deserialize_with = "cidrs")]
    pub deny: Vec<IpNet>,
    /// Drop nothing: count what would be dropped, globally and per source.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub dry_run: Option<bool>,
    /// Keep DNS on the interface out of conntrack with NOTRACK rules [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub conntrack_bypass: Option<bool>,
    /// Refuse UDP to a DNS port that cannot be a query: QR=1 (reflection), shorter than a
    /// DNS header, question count not 1, or an opcode not in --opcodes [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub dns_sanity: Option<bool>,
    /// Admit answers (packets from a DNS port) only when they answer a query or belong
    /// to a TCP connection this host sent; `false` drops every answer, for
    /// authoritative-only servers [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub backending: Option<bool>,
    /// Opcodes allowed in queries: names or numbers, comma-separated
    /// [default: query,notify,update].
    #[arg(long, value_name = "LIST", value_parser = parse_opcodes)]
    #[serde(default, deserialize_with = "opcodes")]
    pub opcodes: Option<u16>,
    /// Aggregate prefix levels limited after the per-source one: `auto` (with --rate:
    /// /24 and /48 at 4x the rate and burst, /16 and /32 at 32x), `none`, or up to three
    /// `V4/V6:RATE:BURST`, comma-separated (e.g. `24/48:200/s:400,16/32:2000/s:4000`).
    #[arg(long, value_name = "LEVELS", value_parser = parse_levels)]
    #[serde(default, deserialize_with = "levels")]
    pub levels: Option<Levels>,
    /// Answer one in N rate-limited UDP queries with a truncated reply (TC=1) instead of
    /// dropping it, so real clients retry over TCP; 0: never [default: 0].
    #[arg(long, value_name = "N")]
    pub slip: Option<u32>,
    /// Slipped replies per second to all destinations together; beyond it refused
    /// queries are dropped, not slipped, and counted `slip_capped` [default: 1000/s].
    #[arg(long, value_name = "RATE")]
    #[serde(default, deserialize_with = "rate")]
    pub slip_cap: Option<Rate>,
    /// Slipped replies per second to one destination /24 (IPv4) or /48 (IPv6): a flood
    /// spoofing one victim makes the server send it no more [default: 10/s].
    #[arg(long, value_name = "RATE")]
    #[serde(default, deserialize_with = "rate")]
    pub slip_prefix_cap: Option<Rate>,
    /// Sample one in N queries of each decision (admitted, limited, denied, shed, ...)
    /// for `dns-xdp log` and `top --queries`; 0: off [default: 100].
    #[arg(long, value_name = "N")]
    pub sample: Option<u32>,
    /// Samples per second, all decisions and CPUs together: the most a flood can make
    /// sampling cost [default: 1000/s].
    #[arg(long, value_name = "RATE")]
    #[serde(default, deserialize_with = "rate")]
    pub sample_cap: Option<Rate>,
    /// Server budget: queries/s the server behind can answer (N, N/s, N/min). Above it,
    /// queries from heavy sources and prefixes (more than half a burst spent at some
    /// level) are shed first; light ones keep a reserve. Without it: no budget.
    #[arg(long, value_name = "RATE")]
    #[serde(default, deserialize_with = "rate")]
    pub budget: Option<Rate>,
    /// Burst of the server budget [default: a tenth of a second of --budget].
    #[arg(long, value_name = "N")]
    pub budget_burst: Option<u32>,
    /// DNS server cookie secrets: the file the DNS server takes its own from (one
    /// 32-digit hex secret per line, or BIND's `cookie-secret "…";` lines; the current
    /// one first, then the previous one). A UDP query with a server cookie one of them
    /// made for its source, within the RFC 9018 window, is exempt from the prefix
    /// levels. Without it: no cookie is checked.
    #[arg(long, value_name = "FILE")]
    pub cookie_secrets: Option<PathBuf>,
    /// Seconds a source stays proven after it last proved its address: completed a TCP
    /// handshake with the server, or sent a valid server cookie. Over the budget,
    /// proven sources are served first; 0: no proof is recorded (TCP queries and valid
    /// cookies still count as proven) [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub proof_ttl: Option<u64>,
    /// Answer UDP queries the budget sheds from unproven sources with a truncated reply
    /// (TC=1, within --slip-cap and --slip-prefix-cap), so a real client retries over
    /// TCP, proves its address and is served [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub budget_slip: Option<bool>,
    /// Print the counters every SECONDS (the final counters are always printed on exit).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    #[serde(default, deserialize_with = "interval")]
    pub stats_interval: Option<Duration>,
    /// Sources named in each report and in the metrics, by refused queries [default: 10].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Serve Prometheus metrics on this address, or `off` [default: 127.0.0.1:9553].
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    #[serde(default, deserialize_with = "metrics_addr")]
    pub metrics_addr: Option<MetricsAddr>,
    /// On exit, leave the programs attached and pinned for the next loader to adopt
    /// [default: false for attach, true for run].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub keep_attached: Option<bool>,
    /// Directory (on a bpffs) holding one pin directory per interface [default: /sys/fs/bpf/dns-xdp].
    #[arg(long, value_name = "DIR", env = "DNS_XDP_PIN_ROOT")]
    pub pin_root: Option<PathBuf>,
}

impl Options {
    /// Reads a TOML file; unknown keys and bad values are errors naming the file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("{}: {}", path.display(), error.message()))
    }

    /// These options, with the ones `self` lacks taken from `file`.
    pub fn over(self, file: Options) -> Options {
        fn list<T>(cli: Vec<T>, file: Vec<T>) -> Vec<T> {
            if cli.is_empty() { file } else { cli }
        }
        Options {
            iface: self.iface.or(file.iface),
            mode: self.mode.or(file.mode),
            ports: list(self.ports, file.ports),
            rate: self.rate.or(file.rate),
            burst: self.burst.or(file.burst),
            v4_prefix: self.v4_prefix.or(file.v4_prefix),
            v6_prefix: self.v6_prefix.or(file.v6_prefix),
            table_size: self.table_size.or(file.table_size),
            allow: list(self.allow, file.allow),
            deny: list(self.deny, file.deny),
            dry_run: self.dry_run.or(file.dry_run),
            conntrack_bypass: self.conntrack_bypass.or(file.conntrack_bypass),
            dns_sanity: self.dns_sanity.or(file.dns_sanity),
            backending: self.backending.or(file.backending),
            opcodes: self.opcodes.or(file.opcodes),
            levels: self.levels.or(file.levels),
            slip: self.slip.or(file.slip),
            slip_cap: self.slip_cap.or(file.slip_cap),
            slip_prefix_cap: self.slip_prefix_cap.or(file.slip_prefix_cap),
            sample: self.sample.or(file.sample),
            sample_cap: self.sample_cap.or(file.sample_cap),
            budget: self.budget.or(file.budget),
            budget_burst: self.budget_burst.or(file.budget_burst),
            cookie_secrets: self.cookie_secrets.or(file.cookie_secrets),
            proof_ttl: self.proof_ttl.or(file.proof_ttl),
            budget_slip: self.budget_slip.or(file.budget_slip),
            stats_interval: self.stats_interval.or(file.stats_interval),
            top: self.top.or(file.top),
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            keep_attached: self.keep_attached.or(file.keep_attached),
            pin_root: self.pin_root.or(file.pin_root),
        }
    }

    pub fn iface(&self) -> anyhow::Result<&str> {
        match &self.iface {
            Some(iface) => Ok(iface),
            None => bail!("no interface: pass --iface (or `iface = \"eth0\"` in the config file)"),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode.map_or(Mode::Auto, Mode::from)
    }

    pub fn top(&self) -> usize {
        self.top.unwrap_or(DEFAULT_TOP)
    }

    pub fn pin_root(&self) -> PathBuf {
        self.pin_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT))
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        match self.metrics_addr {
            Some(MetricsAddr(addr)) => addr,
            None => DEFAULT_METRICS_ADDR.parse().ok(),
        }
    }

    /// The validated settings of the kernel side.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let defaults = Settings::default();
        if self.burst.is_some() && self.rate.is_none() {
            bail!("--burst needs --rate");
        }
        let settings = Settings {
            ports: if self.ports.is_empty() {
                defaults.ports
            } else {
                self.ports.clone()
            },
            rate: self.rate,
            burst: self.burst.unwrap_or(defaults.burst),
            v4_prefix: self.v4_prefix.unwrap_or(defaults.v4_prefix),
            v6_prefix: self.v6_prefix.unwrap_or(defaults.v6_prefix),
            table_size: self.table_size.unwrap_or(defaults.table_size),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            dry_run: self.dry_run.unwrap_or(defaults.dry_run),
            conntrack_bypass: self.conntrack_bypass.unwrap_or(defaults.conntrack_bypass),
            dns_sanity: self.dns_sanity.unwrap_or(defaults.dns_sanity),
            backending: self.backending.unwrap_or(defaults.backending),
            opcodes: self.opcodes.unwrap_or(defaults.opcodes),
            levels: self.levels.clone().unwrap_or(defaults.levels),
            slip: self.slip.unwrap_or(defaults.slip),
            slip_cap: self.slip_cap.unwrap_or(defaults.slip_cap),
            slip_prefix_cap: self.slip_prefix_cap.unwrap_or(defaults.slip_prefix_cap),
            sample: self.sample.unwrap_or(defaults.sample),
            sample_cap: self.sample_cap.unwrap_or(defaults.sample_cap),
            budget: self.budget,
            budget_burst: self.budget_burst,
            cookie_secrets: match &self.cookie_secrets {
                Some(path) => crate::cookies::read_secrets(path)?,
                None => Vec::new(),
            },
            proof_ttl: self.proof_ttl.unwrap_or(defaults.proof_ttl),
            budget_slip: self.budget_slip.unwrap_or(defaults.budget_slip),
        };
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Options> {
        toml::from_str(text).map_err(|error| anyhow::anyhow!(error.message().to_owned()))
    }

    #[test]
    fn a_file_names_every_option() {
        let options = parse(
            r#"
            iface = "eth0"
            mode = "skb"
            ports = [53, 853]
            rate = "10/s"
            burst = 20
            v4-prefix = 24
            v6-prefix = 48
            table-size = 65536
            allow = ["192.0.2.0/24"]
            deny = ["2001:db8::/32"]
            dry-run = true
            conntrack-bypass = false
            dns-sanity = true
            opcodes = "query"
            stats-interval = 5
            top = 20
            metrics-addr = "127.0.0.1:9600"
            keep-attached = true
            pin-root = "/sys/fs/bpf/other"
            "#,
        )
        .unwrap();
        let settings = options.settings().unwrap();
        assert_eq!(settings.ports, [53, 853]);
        assert_eq!(settings.rate.unwrap().to_string(), "10/s");
        assert_eq!(
            (settings.burst, settings.v4_prefix, settings.v6_prefix),
            (20, 24, 48)
        );
        assert!(settings.dry_run && !settings.conntrack_bypass);
        assert_eq!(options.stats_interval, Some(Duration::from_secs(5)));
        assert_eq!(options.metrics_addr(), "127.0.0.1:9600".parse().ok());
        assert_eq!(options.mode(), Mode::Skb);
        assert_eq!(parse("rate = 7").unwrap().rate.unwrap().to_string(), "7/s");
    }

    #[test]
    fn the_packaged_example_config_is_valid() {
        let options = parse(include_str!("../../packaging/dns-xdp.example.toml")).unwrap();
        let settings = options.settings().unwrap();
        assert_eq!(settings.rate.unwrap().to_string(), "50/s");
        assert_eq!(options.iface().unwrap(), "eth0");
        assert_eq!(settings.sample, 100);
        assert_eq!(settings.sample_cap.to_string(), "1000/s");
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        assert!(
            parse("rate-limit = 5")
                .unwrap_err()
                .to_string()
                .contains("unknown field `rate-limit`")
        );
        assert!(
            parse("rate = 0")
                .unwrap_err()
                .to_string()
                .contains("rate of 0")
        );
        assert!(
            parse("allow = [\"10.0.0.1/8\"]")
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        assert!(
            parse("metrics-addr = \"everywhere\"")
                .unwrap_err()
                .to_string()
                .contains("not an address")
        );
        assert!(
            parse("v4-prefix = 40")
                .unwrap()
                .settings()
                .unwrap_err()
                .to_string()
                .contains("--v4-prefix 40")
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let file =
            parse("iface = \"eth0\"\nrate = \"10/s\"\nports = [53]\ndry-run = true").unwrap();
        let cli = Options {
            rate: Some("20/s".parse().unwrap()),
            ports: vec![5353],
            dry_run: Some(false),
            ..Options::default()
        };
        let merged = cli.over(file);
        assert_eq!(merged.iface.as_deref(), Some("eth0"));
        assert_eq!(merged.rate.unwrap().to_string(), "20/s");
        assert_eq!(merged.ports, [5353]);
        assert_eq!(merged.dry_run, Some(false));
        assert_eq!(merged.metrics_addr(), DEFAULT_METRICS_ADDR.parse().ok());
    }
}
