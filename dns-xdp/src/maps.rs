//! The maps the programs share with userspace, opened from a freshly loaded object or
//! from their pins (so any shell can read and change a running instance).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use dns_xdp_common::{
    Config, Counters, EgressCounters, FAMILY_V4, FLAG_LIST_V4, FLAG_LIST_V6, LIST_ALLOW, LIST_DENY,
    ListEntry, SourceKey, SourceState,
};
use ipnet::IpNet;

/// The maps that outlive a loader (pinned): everything but the log ring buffer.
pub const PINNED_MAPS: [&str; 9] = [
    "CONFIG",
    "CONFIG_SLOT",
    "COUNTERS",
    "EGRESS_COUNTERS",
    "SOURCES",
    "LIST_V4",
    "LIST_V6",
    "AWAITED",
    "FRAGMENTS",
];

/// A source prefix with what happened to its queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    pub prefix: IpNet,
    /// The prefix level of the bucket (0: the per-source level).
    pub level: u8,
    /// A bucket of TCP (connection attempts or data segments); UDP queries otherwise.
    pub tcp: bool,
    /// Which bucket: `udp`, `tcp` (connection attempts) or `tcp_data` (data segments).
    pub bucket: &'static str,
    pub passed: u64,
    pub dropped: u64,
    pub would_drop: u64,
}

impl SourceReport {
    fn new(key: &SourceKey, state: &SourceState) -> Self {
        let addr = if key.family == FAMILY_V4 {
            let [a, b, c, d, ..] = key.addr;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from(key.addr))
        };
        Self {
            prefix: IpNet::new(addr, key.prefix_len).unwrap_or_else(|_| IpNet::from(addr)),
            level: key.level,
            tcp: key.tcp != 0,
            bucket: dns_xdp_common::bucket_name(key.tcp),
            passed: state.passed,
            dropped: state.dropped,
            would_drop: state.would_drop,
        }
    }

    /// Queries its bucket refused, dropped or (dry-run) not.
    pub fn refused(&self) -> u64 {
        self.dropped + self.would_drop
    }
}

/// An allow/deny list entry and how many queries it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListReport {
    pub prefix: IpNet,
    pub allow: bool,
    pub hits: u64,
}

/// Key and value sizes of every pinned map, as this build lays them out.
fn layouts() -> [(&'static str, usize, usize); 9] {
    use std::mem::size_of;
    [
        ("CONFIG", 4, size_of::<dns_xdp_common::Config>()),
        ("CONFIG_SLOT", 4, 4),
        ("COUNTERS", 4, size_of::<Counters>()),
        ("EGRESS_COUNTERS", 4, size_of::<EgressCounters>()),
        ("SOURCES", size_of::<SourceKey>(), size_of::<SourceState>()),
        ("LIST_V4", 4 + 4, size_of::<ListEntry>()),
        ("LIST_V6", 4 + 16, size_of::<ListEntry>()),
        (
            "AWAITED",
            size_of::<dns_xdp_common::AwaitedKey>(),
            size_of::<dns_xdp_common::AwaitedState>(),
        ),
        ("FRAGMENTS", size_of::<dns_xdp_common::FragmentKey>(), 8),
    ]
}

/// Checks that the maps pinned in `dir` have this build's layout, so a loader never
/// adopts maps an older or newer build laid out differently.
pub fn check_pinned_layout(dir: &Path) -> anyhow::Result<()> {
    for (name, key_size, value_size) in layouts() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?
            .info()?;
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            bail!(
                "the maps pinned in {} come from a dns-xdp build with another layout ({name}: \
                 key {} / value {} bytes, this build {key_size} / {value_size}); remove them with \
                 `dns-xdp detach` first",
                dir.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

pub struct Maps {
    config: Map,
    config_slot: Map,
    counters: Map,
    egress: Map,
    sources: Map,
    list_v4: Map,
    list_v6: Map,
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep using them).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::assemble(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        })
    }

    /// Opens the maps a running (or killed) loader pinned in `dir`.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        Self::assemble(|name| {
            let path = dir.join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    fn assemble(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(Self {
            config: get("CONFIG")?,
            config_slot: get("CONFIG_SLOT")?,
            counters: get("COUNTERS")?,
            egress: get("EGRESS_COUNTERS")?,
            sources: get("SOURCES")?,
            list_v4: get("LIST_V4")?,
            list_v6: get("LIST_V6")?,
        })
    }

    fn slot(&self) -> anyhow::Result<u32> {
        let slot: Array<&MapData, u32> = Array::try_from(&self.config_slot)?;
        Ok(slot.get(&0, 0).context("reading CONFIG_SLOT")? & 1)
    }

    /// The configuration the programs use now.
    pub fn config(&self) -> anyhow::Result<Config> {
        let configs: Array<&MapData, Config> = Array::try_from(&self.config)?;
        configs.get(&self.slot()?, 0).context("reading CONFIG")
    }

    /// Replaces the configuration atomically: the programs read the slot CONFIG_SLOT
    /// names, so the new one is written to the other slot, then the slot is flipped.
    /// Each packet sees the old or the new configuration, never a mix.
    pub fn set_config(&mut self, config: &Config) -> anyhow::Result<()> {
        let next = 1 - self.slot()?;
        let mut configs: Array<&mut MapData, Config> = Array::try_from(&mut self.config)?;
        configs.set(next, config, 0).context("writing CONFIG")?;
        let mut slot: Array<&mut MapData, u32> = Array::try_from(&mut self.config_slot)?;
        slot.set(0, next, 0).context("writing CONFIG_SLOT")?;
        Ok(())
    }

    /// Ingress counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(&self.counters)?;
        let mut total = Counters::default();
        for per_cpu in map.get(&0, 0).context("reading COUNTERS")?.iter() {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// Egress counters summed over all CPUs.
    pub fn egress_counters(&self) -> anyhow::Result<EgressCounters> {
        let map: PerCpuArray<&MapData, EgressCounters> = PerCpuArray::try_from(&self.egress)?;
        let mut total = EgressCounters::default();
        for per_cpu in map.get(&0, 0).context("reading EGRESS_COUNTERS")?.iter() {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// Every source prefix in the table, with its counters.
    pub fn sources(&self) -> anyhow::Result<Vec<SourceReport>> {
        Ok(self
            .source_states()?
            .iter()
            .map(|(key, state)| SourceReport::new(key, state))
            .collect())
    }

    /// Every bucket as the kernel keeps it (its GCRA state included).
    pub fn source_states(&self) -> anyhow::Result<Vec<(SourceKey, SourceState)>> {
        let map: HashMap<&MapData, SourceKey, SourceState> = HashMap::try_from(&self.sources)?;
        let mut states = Vec::new();
        for item in map.iter() {
            // An entry evicted while we walk ends the walk early; what we have is still true.
            let Ok(entry) = item else { break };
            states.push(entry);
        }
        Ok(states)
    }

    /// Capacity of the source table.
    pub fn table_size(&self) -> anyhow::Result<u32> {
        let Map::LruHashMap(data) = &self.sources else {
            bail!("SOURCES is not an LRU hash");
        };
        Ok(data.info()?.max_entries())
    }

    /// The `limit` sources whose buckets refused the most queries (none refused: none).
    pub fn top_sources(&self, limit: usize) -> anyhow::Result<Vec<SourceReport>> {
        Ok(top_refused(self.sources()?, limit))
    }

    /// Every list entry with its hits.
    pub fn lists(&self) -> anyhow::Result<Vec<ListReport>> {
        let mut reports = Vec::new();
        let v4: LpmTrie<&MapData, [u8; 4], ListEntry> = LpmTrie::try_from(&self.list_v4)?;
        for item in v4.iter() {
            let (key, entry) = item?;
            reports.push(list_report(
                IpAddr::V4(Ipv4Addr::from(key.data())),
                key.prefix_len(),
                &entry,
            )?);
        }
        let v6: LpmTrie<&MapData, [u8; 16], ListEntry> = LpmTrie::try_from(&self.list_v6)?;
        for item in v6.iter() {
            let (key, entry) = item?;
            reports.push(list_report(
                IpAddr::V6(Ipv6Addr::from(key.data())),
                key.prefix_len(),
                &entry,
            )?);
        }
        Ok(reports)
    }

    /// Puts `prefix` in the allow (or deny) list, keeping its hits if it was there with
    /// the same action, and turns the family's lookup on.
    pub fn list_insert(&mut self, prefix: IpNet, allow: bool) -> anyhow::Result<()> {
        if self
            .lists()?
            .iter()
            .any(|entry| entry.prefix == prefix && entry.allow == allow)
        {
            return Ok(());
        }
        let entry = ListEntry {
            action: if allow { LIST_ALLOW } else { LIST_DENY },
            ..ListEntry::default()
        };
        let len = u32::from(prefix.prefix_len());
        match prefix.addr() {
            IpAddr::V4(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], ListEntry> =
                    LpmTrie::try_from(&mut self.list_v4)?;
                trie.insert(&Key::new(len, addr.octets()), entry, 0)
            }
            IpAddr::V6(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], ListEntry> =
                    LpmTrie::try_from(&mut self.list_v6)?;
                trie.insert(&Key::new(len, addr.octets()), entry, 0)
            }
        }
        .with_context(|| format!("adding {prefix} to the lists"))?;
        // The entry exists before the programs are told to look.
        self.sync_list_flags()
    }

    /// Removes `prefix` from the lists; `false` if it was in neither.
    pub fn list_remove(&mut self, prefix: IpNet) -> anyhow::Result<bool> {
        let len = u32::from(prefix.prefix_len());
        let removed = match prefix.addr() {
            IpAddr::V4(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], ListEntry> =
                    LpmTrie::try_from(&mut self.list_v4)?;
                trie.remove(&Key::new(len, addr.octets()))
            }
            IpAddr::V6(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], ListEntry> =
                    LpmTrie::try_from(&mut self.list_v6)?;
                trie.remove(&Key::new(len, addr.octets()))
            }
        }
        .is_ok();
        self.sync_list_flags()?;
        Ok(removed)
    }

    /// Makes the lists hold exactly `allow` and `deny`, keeping the hits of entries that stay.
    pub fn set_lists(&mut self, allow: &[IpNet], deny: &[IpNet]) -> anyhow::Result<()> {
        for entry in self.lists()? {
            let wanted = if entry.allow { allow } else { deny };
            if !wanted.contains(&entry.prefix) {
                self.list_remove(entry.prefix)?;
            }
        }
        for (list, is_allow) in [(allow, true), (deny, false)] {
            for prefix in list {
                self.list_insert(*prefix, is_allow)?;
            }
        }
        Ok(())
    }

    /// Sets the config's per-family "list has entries" flags from the lists themselves.
    fn sync_list_flags(&mut self) -> anyhow::Result<()> {
        let lists = self.lists()?;
        let mut config = self.config()?;
        let before = config.flags;
        for (flag, v4) in [(FLAG_LIST_V4, true), (FLAG_LIST_V6, false)] {
            if lists
                .iter()
                .any(|entry| matches!(entry.prefix, IpNet::V4(_)) == v4)
            {
                config.flags |= flag;
            } else {
                config.flags &= !flag;
            }
        }
        if config.flags != before {
            self.set_config(&config)?;
        }
        Ok(())
    }
}

/// The `limit` sources that were refused most (ties: most passed, then by prefix).
pub fn top_refused(sources: Vec<SourceReport>, limit: usize) -> Vec<SourceReport> {
    let mut refused: Vec<_> = sources
        .into_iter()
        .filter(|source| source.refused() > 0)
        .collect();
    refused
        .sort_by(|a, b| (b.refused(), b.passed, a.prefix).cmp(&(a.refused(), a.passed, b.prefix)));
    refused.truncate(limit);
    refused
}

fn list_report(addr: IpAddr, len: u32, entry: &ListEntry) -> anyhow::Result<ListReport> {
    Ok(ListReport {
        prefix: IpNet::new(addr, u8::try_from(len)?)?,
        allow: entry.action == LIST_ALLOW,
        hits: entry.hits,
    })
}
