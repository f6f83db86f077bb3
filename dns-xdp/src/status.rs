//! What dns-xdp has on an interface, seen from any shell: the programs attached, the
//! conntrack bypass rules, conntrack headroom, and filter rules that would drop
//! untracked DNS.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::{Value, json};

use dns_xdp_common::{Config, Level, NS_PER_SEC};

use crate::{
    conntrack::{self, Hazard, Headroom, InstalledRule},
    maps::{Maps, TableOccupancy},
    programs::{EGRESS_PROGRAM, XDP_PROGRAM, if_index, pin_dir},
};

/// A BPF program attached to the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    pub name: String,
    /// XDP mode (`native`, `skb`, `offload`) or `tcx` for the egress hook.
    pub mode: String,
}

impl Attached {
    /// Whether this is one of dns-xdp's programs.
    pub fn is_ours(&self) -> bool {
        self.name == XDP_PROGRAM || self.name == EGRESS_PROGRAM
    }
}

pub struct Status {
    pub iface: String,
    /// Whether an interface of that name exists here (an instance outlives a deleted
    /// one: its pins, configuration and rules are still shown).
    pub present: bool,
    /// The instance's pin directory, if it exists.
    pub pins: Option<PathBuf>,
    /// The live configuration, read from the pinned maps.
    pub config: Option<Config>,
    /// The source table, read from the pinned maps.
    pub table: Option<TableOccupancy>,
    pub xdp: Option<Attached>,
    pub egress: Vec<Attached>,
    /// `None`: no bypass table for this interface.
    pub bypass: Option<Vec<InstalledRule>>,
    pub conntrack: Option<Headroom>,
    pub hazards: Vec<Hazard>,
    /// The daemon's configuration file and the live values that differ from it (live
    /// `set`, `allow`, `deny` changes a restart would undo).
    pub drift: Option<Drift>,
}

/// How the live configuration differs from the file the daemon started from.
pub struct Drift {
    pub file: PathBuf,
    /// The differing settings, by their `config` field names (`allow`, `deny`: lists).
    pub differ: Vec<String>,
}

impl Drift {
    /// Compares the live `config` and lists of the instance in `dir` with `file`.
    fn of(file: PathBuf, config: &Config, maps: &Maps) -> anyhow::Result<Self> {
        let settings = crate::options::Options::from_file(&file)?.settings()?;
        let (live, from_file) = (config_json(config), config_json(&settings.config()?));
        let mut differ: Vec<String> = live
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, value)| *name != "generation" && from_file.get(*name) != Some(value))
            .map(|(name, _)| name.clone())
            .collect();
        let lists = maps.lists()?;
        for (name, allow, wanted) in [
            ("allow", true, &settings.allow),
            ("deny", false, &settings.deny),
        ] {
            let mut live: Vec<_> = lists
                .iter()
                .filter(|entry| entry.allow == allow)
                .map(|entry| entry.prefix)
                .collect();
            let mut wanted = wanted.clone();
            live.sort();
            wanted.sort();
            if live != wanted {
                differ.push(name.to_owned());
            }
        }
        Ok(Self { file, differ })
    }
}

impl Status {
    pub fn collect(iface: &str, ports: &[u16], pin_root: &Path) -> anyhow::Result<Self> {
        let present = if_index(iface).is_ok();
        let egress = present
            .then(|| SchedClassifier::query_tcx(iface, TcAttachType::Egress).ok())
            .flatten()
            .map(|(_, programs)| {
                programs
                    .iter()
                    .map(|info| Attached {
                        id: info.id(),
                        name: info.name_as_str().unwrap_or_default().to_owned(),
                        mode: "tcx".to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dir = pin_dir(pin_root, iface);
        if !present && !dir.exists() && conntrack::installed(iface)?.is_none() {
            // Nothing of ours, and no such interface: most likely a typo.
            if_index(iface)?;
        }
        let pins = dir.exists().then_some(dir);
        let (config, drift, table) = match &pins {
            Some(dir) => {
                let maps = Maps::from_pins(dir)?;
                let config = maps.config()?;
                let table = maps.table_occupancy()?;
                let drift = crate::pins::recorded_config_file(dir)
                    .map(|file| Drift::of(file, &config, &maps))
                    .transpose()
                    .unwrap_or_else(|error| {
                        log::warn!("could not compare with the configuration file: {error:#}");
                        None
                    });
                (Some(config), drift, Some(table))
            }
            None => (None, None, None),
        };
        Ok(Self {
            iface: iface.to_owned(),
            present,
            pins,
            config,
            table,
            xdp: if present { attached_xdp(iface)? } else { None },
            egress,
            bypass: conntrack::installed(iface)?,
            conntrack: conntrack::headroom(),
            hazards: conntrack::hazards(ports).unwrap_or_default(),
            drift,
        })
    }

    pub fn json(&self) -> Value {
        let program = |attached: &Attached| json!({"id": attached.id, "name": attached.name, "mode": attached.mode});
        json!({
            "iface": self.iface,
            "present": self.present,
            "drift": self.drift.as_ref().map(|drift| json!({
                "file": drift.file.display().to_string(),
                "differ": drift.differ,
            })),
            "pins": self.pins.as_ref().map(|dir| dir.display().to_string()),
            "config": self.config.as_ref().map(config_json),
            "source_table": self.table.map(|table| json!({
                "slots": table.slots,
                "bytes": table.bytes,
                "in_use": table.in_use,
                "active": table.active,
            })),
            "xdp": self.xdp.as_ref().map(program),
            "egress": self.egress.iter().map(program).collect::<Vec<_>>(),
            "conntrack_bypass": self.bypass.as_ref().map(|rules| rules.iter().map(|rule| json!({
                "chain": rule.chain, "purpose": rule.purpose, "packets": rule.packets,
            })).collect::<Vec<_>>()),
            "conntrack": headroom_json(self.conntrack),
            "hazards": self.hazards.iter().map(|hazard| json!({
                "chain": hazard.chain,
                "missing": hazard.missing.iter().map(|needed| needed.lets_through).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self, ports: &[u16]) -> String {
        let program = |attached: &Attached| {
            format!("{} (id {}, {})", attached.name, attached.id, attached.mode)
        };
        let mut text = format!("interface {}\n", self.iface);
        if !self.present {
            text.push_str(
                "  (no interface of that name here: deleted, or in another namespace; \
                 a running loader attaches again when it returns)\n",
            );
        }
        if let (Some(dir), Some(config)) = (&self.pins, &self.config) {
            text.push_str(&format!("  pins:       {}\n", dir.display()));
            text.push_str(&format!("  config:     {}\n", config_json(config)));
        }
        if let Some(table) = &self.table {
            text.push_str(&format!(
                "  sources:    {} slots ({:.1} MiB, {} bytes each): {} in use, {} active within {} s\n",
                table.slots,
                table.bytes as f64 / f64::from(1 << 20),
                table.bytes / u64::from(table.slots.max(1)),
                table.in_use,
                table.active,
                dns_xdp_common::SOURCE_HOLD_NS / NS_PER_SEC
            ));
        }
        if let Some(drift) = &self.drift {
            if drift.differ.is_empty() {
                text.push_str(&format!(
                    "  file:       {} (the live configuration is the file's)\n",
                    drift.file.display()
                ));
            } else {
                text.push_str(&format!(
                    "  file:       {}: live {} differ (live changes; a restart applies the file)\n",
                    drift.file.display(),
                    drift.differ.join(", ")
                ));
            }
        }
        text.push_str(&format!(
            "  xdp:        {}\n",
            self.xdp.as_ref().map_or("none".to_owned(), program)
        ));
        let egress: Vec<String> = self.egress.iter().map(program).collect();
        text.push_str(&format!(
            "  tc egress:  {}\n",
            if egress.is_empty() {
                "none".to_owned()
            } else {
                egress.join(", ")
            }
        ));
        match &self.bypass {
            None => text.push_str("  conntrack bypass: none\n"),
            Some(rules) => {
                text.push_str(&format!(
                    "  conntrack bypass (nft table inet {}):\n",
                    conntrack::table_name(&self.iface)
                ));
                for rule in rules {
                    text.push_str(&format!(
                        "    {:<11} notrack {:<45} {:>12} packets\n",
                        rule.chain, rule.purpose, rule.packets
                    ));
                }
            }
        }
        match self.conntrack {
            Some(Headroom { count, max }) => {
                text.push_str(&format!("  conntrack:  {count} of {max} entries in use\n"))
            }
            None => text.push_str("  conntrack:  not loaded\n"),
        }
        for hazard in &self.hazards {
            text.push_str(&format!(
                "  warning: {}\n",
                hazard_warning(hazard, ports, &self.iface)
            ));
        }
        text
    }
}

/// A level's limit in the operator's terms: rate per second and burst, or null when off.
pub fn level_json(level: &Level) -> Value {
    let limit = &level.limit;
    json!({
        "v4_prefix": level.v4_prefix_len,
        "v6_prefix": level.v6_prefix_len,
        "rate_per_s": per_second(limit),
        "burst": limit.is_on().then(|| limit.burst()),
    })
}

/// A limit's rate per second, or `None` when it is off.
fn per_second(limit: &dns_xdp_common::Limit) -> Option<f64> {
    limit
        .is_on()
        .then(|| NS_PER_SEC as f64 / limit.interval_ns as f64)
}

/// The live configuration in the operator's terms. `rate_per_s`, `burst` and the
/// prefixes at the top level are level 0's (the per-source limit).
pub fn config_json(config: &Config) -> Value {
    let mut value = level_json(&config.levels[0]);
    value["ports"] = json!(config.dns_ports.iter().collect::<Vec<_>>());
    value["levels"] = config.levels[1..]
        .iter()
        .filter(|level| level.limit.is_on())
        .map(level_json)
        .collect::<Vec<_>>()
        .into();
    value["dry_run"] = json!(config.dry_run());
    value["dns_sanity"] = json!(config.sanity());
    value["backending"] = json!(config.backending());
    value["slip"] = json!(config.slip);
    value["generation"] = json!(config.generation);
    value["slip_cap_per_s"] = json!(per_second(&config.slip_cap));
    value["slip_prefix_cap_per_s"] = json!(per_second(&config.slip_prefix_cap));
    value["sample"] = json!(config.sample_every);
    value["sample_cap_per_s"] = json!(per_second(&config.sample_cap));
    value["budget"] = config
        .budget
        .is_on()
        .then(|| {
            json!({
                "rate_per_s": NS_PER_SEC as f64 / config.budget.interval_ns as f64,
                "burst": config.budget.burst(),
            })
        })
        .into();
    // How many secrets, never the secrets: status output ends up in tickets and logs.
    value["cookie_secrets"] = json!(config.cookies.count);
    value["proof_ttl_s"] = json!(config.proof_ttl_ns / NS_PER_SEC);
    value["budget_slip"] = json!(config.budget_slip());
    value["opcodes"] = json!(
        (0..16u8)
            .filter(|opcode| config.allowed_opcodes & (1 << opcode) != 0)
            .collect::<Vec<_>>()
    );
    value
}

/// `{"count":..,"max":..}`, or null where conntrack is not loaded.
pub fn headroom_json(headroom: Option<Headroom>) -> Value {
    headroom.map_or(
        Value::Null,
        |Headroom { count, max }| json!({"count": count, "max": max}),
    )
}

/// The warning for a chain that drops untracked DNS, with the rules that fix it.
pub fn hazard_warning(hazard: &Hazard, ports: &[u16], iface: &str) -> String {
    let mut text = format!(
        "chain {} drops by default and has no stateless accept for the DNS ports; \
         untracked DNS will be dropped there. Add:",
        hazard.chain
    );
    for line in conntrack::advice(hazard, ports, iface) {
        text.push_str(&format!("\n    {line}"));
    }
    text
}

/// The XDP program on `iface`, from `ip -d -j link show`.
pub fn attached_xdp(iface: &str) -> anyhow::Result<Option<Attached>> {
    let output = Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()
        .context("running ip (iproute2)")?;
    let links: Value = serde_json::from_slice(&output.stdout).context("parsing ip's JSON")?;
    let xdp = &links[0]["xdp"];
    let Some(id) = xdp["prog"]["id"].as_u64() else {
        return Ok(None);
    };
    let mode = match xdp["mode"].as_u64() {
        Some(1) => "native",
        Some(2) => "skb",
        Some(3) => "offload",
        _ => "multi",
    };
    Ok(Some(Attached {
        id: u32::try_from(id)?,
        name: xdp["prog"]["name"].as_str().unwrap_or_default().to_owned(),
        mode: mode.to_owned(),
    }))
}
