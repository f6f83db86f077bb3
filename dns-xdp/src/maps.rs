//! The maps the programs share with userspace, opened from a freshly loaded object or
//! from their pins (so any shell can read and change a running instance).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use bytemuck::Zeroable as _;
use dns_xdp_common::{
    Config, Counters, EgressCounters, FAMILY_V4, Family, LIST_ALLOW, LIST_DENY, ListEntry,
    PROVEN_LINES, ProvenLine, SOURCE_WAYS, SourceHash, SourceKey, SourceLine, SourceState,
    maps as spec, samples::SampledTypes,
};
use ipnet::IpNet;

/// The longest a read of the source table may take (reports, `top`, a scrape): past it,
/// the read ends with the lines it has.
pub const WALK_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The maps that outlive a loader (pinned), from the object's map list.
pub fn pinned_maps() -> impl Iterator<Item = &'static str> {
    spec::pinned().map(|map| map.name)
}

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

/// The source table's size and what is in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableOccupancy {
    pub slots: u32,
    pub bytes: u64,
    pub in_use: u64,
    pub active: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel programs' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current time into `now`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if status != 0 {
        return 0;
    }
    now.tv_sec as u64 * dns_xdp_common::NS_PER_SEC + now.tv_nsec as u64
}

/// An allow/deny list entry and how many queries it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListReport {
    pub prefix: IpNet,
    pub allow: bool,
    pub hits: u64,
}

/// Checks that the maps pinned in `dir` have this build's layout, so a loader never
/// adopts maps an older or newer build laid out differently.
pub fn check_pinned_layout(dir: &Path) -> anyhow::Result<()> {
    for spec::MapSpec {
        name,
        key_size,
        value_size,
        ..
    } in spec::pinned()
    {
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

/// The maps the loader reads and writes, typed once when opened.
pub struct Maps {
    config: Array<MapData, Config>,
    config_slot: Array<MapData, u32>,
    counters: PerCpuArray<MapData, Counters>,
    egress: PerCpuArray<MapData, EgressCounters>,
    sources: Array<MapData, SourceLine>,
    source_hash: Array<MapData, SourceHash>,
    proven: Array<MapData, ProvenLine>,
    /// The source table's lines (its size is fixed when created).
    lines: u32,
    list_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    list_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    sampled_types: PerCpuArray<MapData, SampledTypes>,
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
        let sources = get(spec::SOURCES.name)?;
        let Map::Array(data) = &sources else {
            bail!("SOURCES is not an array");
        };
        let lines = data.info()?.max_entries();
        Ok(Self {
            config: Array::try_from(get(spec::CONFIG.name)?)?,
            config_slot: Array::try_from(get(spec::CONFIG_SLOT.name)?)?,
            counters: PerCpuArray::try_from(get(spec::COUNTERS.name)?)?,
            egress: PerCpuArray::try_from(get(spec::EGRESS_COUNTERS.name)?)?,
            sources: Array::try_from(sources)?,
            source_hash: Array::try_from(get(spec::SOURCE_HASH.name)?)?,
            proven: Array::try_from(get(spec::PROVEN.name)?)?,
            lines,
            list_v4: LpmTrie::try_from(get(spec::LIST_V4.name)?)?,
            list_v6: LpmTrie::try_from(get(spec::LIST_V6.name)?)?,
            sampled_types: PerCpuArray::try_from(get(spec::SAMPLED_TYPES.name)?)?,
        })
    }

    fn slot(&self) -> anyhow::Result<u32> {
        Ok(self.config_slot.get(&0, 0).context("reading CONFIG_SLOT")? & 1)
    }

    /// The configuration the programs use now.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config.get(&self.slot()?, 0).context("reading CONFIG")
    }

    /// Replaces the configuration atomically with `config`, a change of the live one
    /// as `config()` returned it: the programs read the slot CONFIG_SLOT names, so the new
    /// one is written to the other slot, then the slot is flipped. Each packet sees the
    /// old or the new configuration, never a mix. Refused, with nothing flipped, if the
    /// live configuration is no longer the one `config` was made from (its generation):
    /// another writer changed it meanwhile, and flipping would lose that change. Writers
    /// hold the `ConfigLock` around reading and writing, so this does not happen to them.
    pub fn set_config(&mut self, config: &Config) -> anyhow::Result<()> {
        // For the tests: widens the window between reading the configuration and writing
        // it back, where two writers without the lock would lose a change.
        if let Some(delay) = std::env::var("DNS_XDP_TEST_CHANGE_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let live = self.config()?;
        if live.generation != config.generation {
            bail!(
                "the configuration changed under this change (generation {} is live, the \
                 change was made from {}); nothing was changed, try again",
                live.generation,
                config.generation
            );
        }
        self.write_config(config)
    }

    /// Replaces the configuration, whatever is live: a loader's start-up configuration.
    pub fn replace_config(&mut self, config: &Config) -> anyhow::Result<()> {
        let live = self.config()?;
        self.write_config(&Config {
            generation: live.generation,
            ..*config
        })
    }

    /// Writes `config` as the next generation into the spare slot, then flips.
    fn write_config(&mut self, config: &Config) -> anyhow::Result<()> {
        let live_slot = self.slot()?;
        let next = Config {
            generation: config.generation.wrapping_add(1),
            ..*config
        };
        self.config
            .set(1 - live_slot, next, 0)
            .context("writing CONFIG")?;
        self.config_slot
            .set(0, 1 - live_slot, 0)
            .context("writing CONFIG_SLOT")?;
        Ok(())
    }

    /// Ingress counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let mut total = Counters::default();
        for per_cpu in self.counters.get(&0, 0).context("reading COUNTERS")?.iter() {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// Samples by decision and question type, summed over all CPUs.
    pub fn sampled_types(&self) -> anyhow::Result<SampledTypes> {
        let mut total = SampledTypes::zeroed();
        for per_cpu in self
            .sampled_types
            .get(&0, 0)
            .context("reading SAMPLED_TYPES")?
            .iter()
        {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// Egress counters summed over all CPUs.
    pub fn egress_counters(&self) -> anyhow::Result<EgressCounters> {
        let mut total = EgressCounters::default();
        for per_cpu in self
            .egress
            .get(&0, 0)
            .context("reading EGRESS_COUNTERS")?
            .iter()
        {
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

    /// Every bucket in use as the kernel keeps it (its GCRA state included), read line by
    /// line, `BATCH` lines per system call where the kernel can (`BPF_MAP_LOOKUP_BATCH`,
    /// Linux 5.6), one at a time otherwise: a fixed number of lines, whatever the
    /// traffic, within `WALK_LIMIT` (past it, the read ends with what it has). Reads are
    /// unlocked: a slot claimed during the read may show its old key.
    pub fn source_states(&self) -> anyhow::Result<Vec<(SourceKey, SourceState)>> {
        Ok(self.source_lines()?.iter().flat_map(line_states).collect())
    }

    /// The source table's lines as the kernel keeps them (tags, buckets, last queries),
    /// read as `source_states` reads them.
    pub fn source_lines(&self) -> anyhow::Result<Vec<SourceLine>> {
        let deadline = std::time::Instant::now() + WALK_LIMIT;
        if let Some(lines) = lookup_batches(self.sources.map(), deadline) {
            return Ok(lines);
        }
        let mut lines = Vec::new();
        for index in 0..self.lines {
            if std::time::Instant::now() > deadline {
                break;
            }
            lines.push(self.sources.get(&index, 0)?);
        }
        Ok(lines)
    }

    /// The source table's occupancy: slots ever taken, and slots whose source sent a
    /// query within `SOURCE_HOLD_NS` (the ones a newcomer cannot take).
    pub fn table_occupancy(&self) -> anyhow::Result<TableOccupancy> {
        let now = monotonic_ns();
        let (mut in_use, mut active) = (0, 0);
        for line in self.source_lines()? {
            for way in 0..SOURCE_WAYS {
                in_use += u64::from(line.tags[way] != 0);
                active += u64::from(
                    line.tags[way] != 0
                        && now.saturating_sub(line.lasts[way]) <= dns_xdp_common::SOURCE_HOLD_NS,
                );
            }
        }
        Ok(TableOccupancy {
            slots: self.table_size()?,
            bytes: self.table_bytes(),
            in_use,
            active,
        })
    }

    /// Sources (prefixes) proven now: the unexpired slots of `PROVEN`.
    pub fn proven_sources(&self) -> anyhow::Result<u64> {
        let now = monotonic_ns();
        let deadline = std::time::Instant::now() + WALK_LIMIT;
        let lines: Vec<ProvenLine> = match lookup_batches(self.proven.map(), deadline) {
            Some(lines) => lines,
            None => (0..PROVEN_LINES)
                .map(|index| self.proven.get(&index, 0))
                .collect::<Result<_, _>>()?,
        };
        Ok(lines
            .iter()
            .flat_map(|line| line.until)
            .filter(|&until| until > now)
            .count() as u64)
    }

    /// The source table's hash key and shape.
    pub fn source_hash(&self) -> anyhow::Result<SourceHash> {
        self.source_hash.get(&0, 0).context("reading SOURCE_HASH")
    }

    /// Capacity of the source table: slots (prefixes tracked at once).
    pub fn table_size(&self) -> anyhow::Result<u32> {
        Ok(self.lines * SOURCE_WAYS as u32)
    }

    /// Bytes of the source table.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.lines) * size_of::<SourceLine>() as u64
    }

    /// Gives a table just made its hash key (a random secret) and shape; a table that
    /// has one (pinned, adopted) keeps it, so its buckets are found where they were.
    pub fn init_source_hash(&mut self) -> anyhow::Result<()> {
        if self.source_hash()?.lines != 0 {
            return Ok(());
        }
        let mut secret = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
            &mut secret,
        )
        .context("reading /dev/urandom")?;
        let hash = SourceHash {
            secret: [
                u64::from_le_bytes(secret[..8].try_into()?),
                u64::from_le_bytes(secret[8..].try_into()?),
            ],
            lines: self.lines,
            _reserved: 0,
        };
        self.source_hash
            .set(0, hash, 0)
            .context("writing SOURCE_HASH")
    }

    /// The `limit` sources whose buckets refused the most queries (none refused: none).
    pub fn top_sources(&self, limit: usize) -> anyhow::Result<Vec<SourceReport>> {
        Ok(top_refused(self.sources()?, limit))
    }

    /// Every list entry with its hits.
    pub fn lists(&self) -> anyhow::Result<Vec<ListReport>> {
        let mut reports = Vec::new();
        for item in self.list_v4.iter() {
            let (key, entry) = item?;
            reports.push(list_report(
                IpAddr::V4(Ipv4Addr::from(key.data())),
                key.prefix_len(),
                &entry,
            )?);
        }
        for item in self.list_v6.iter() {
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
        self.insert_entry(prefix, allow)?;
        // The entry exists before the programs are told to look.
        self.sync_list_flags()
    }

    /// Removes `prefix` from the lists; `false` if it was in neither.
    pub fn list_remove(&mut self, prefix: IpNet) -> anyhow::Result<bool> {
        let removed = self.remove_entry(prefix);
        self.sync_list_flags()?;
        Ok(removed)
    }

    /// Makes the lists hold exactly `allow` and `deny`, keeping the hits of entries that
    /// stay: one walk of the lists, one write per entry that changes, then the flags.
    pub fn set_lists(&mut self, allow: &[IpNet], deny: &[IpNet]) -> anyhow::Result<()> {
        let wanted: HashSet<(IpNet, bool)> = allow
            .iter()
            .map(|prefix| (*prefix, true))
            .chain(deny.iter().map(|prefix| (*prefix, false)))
            .collect();
        let mut present = HashSet::new();
        for entry in self.lists()? {
            if wanted.contains(&(entry.prefix, entry.allow)) {
                present.insert((entry.prefix, entry.allow));
            } else {
                self.remove_entry(entry.prefix);
            }
        }
        for &(prefix, allow) in wanted.difference(&present) {
            self.insert_entry(prefix, allow)?;
        }
        self.sync_list_flags()
    }

    /// Writes `prefix`'s entry (a fresh one: no hits).
    fn insert_entry(&mut self, prefix: IpNet, allow: bool) -> anyhow::Result<()> {
        let entry = ListEntry {
            action: if allow { LIST_ALLOW } else { LIST_DENY },
            ..ListEntry::default()
        };
        let len = u32::from(prefix.prefix_len());
        match prefix.addr() {
            IpAddr::V4(addr) => self.list_v4.insert(&Key::new(len, addr.octets()), entry, 0),
            IpAddr::V6(addr) => self.list_v6.insert(&Key::new(len, addr.octets()), entry, 0),
        }
        .with_context(|| format!("adding {prefix} to the lists"))
    }

    /// Removes `prefix`'s entry; whether there was one.
    fn remove_entry(&mut self, prefix: IpNet) -> bool {
        let len = u32::from(prefix.prefix_len());
        match prefix.addr() {
            IpAddr::V4(addr) => self.list_v4.remove(&Key::new(len, addr.octets())),
            IpAddr::V6(addr) => self.list_v6.remove(&Key::new(len, addr.octets())),
        }
        .is_ok()
    }

    /// Sets the config's per-family "list has entries" flags from the lists themselves.
    fn sync_list_flags(&mut self) -> anyhow::Result<()> {
        let lists = self.lists()?;
        let mut config = self.config()?;
        let before = config.flags;
        for family in [Family::V4, Family::V6] {
            let listed = lists
                .iter()
                .any(|entry| Family::of(&entry.prefix.addr()) == family);
            config.set_list(family, listed);
        }
        if config.flags != before {
            self.set_config(&config)?;
        }
        Ok(())
    }
}

/// Source table lines read per `BPF_MAP_LOOKUP_BATCH` call (2 MiB).
const BATCH: usize = 4096;

/// `union bpf_attr` as `BPF_MAP_LOOKUP_BATCH` reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The slots of a line in use, as reports read them.
fn line_states(line: &SourceLine) -> impl Iterator<Item = (SourceKey, SourceState)> + '_ {
    (0..SOURCE_WAYS)
        .filter(|&way| line.tags[way] != 0)
        .map(|way| {
            let counts = &line.counts[way];
            (
                line.keys[way],
                SourceState {
                    tat_ns: line.tats[way],
                    passed: counts.passed,
                    dropped: counts.dropped,
                    would_drop: counts.would_drop,
                },
            )
        })
}

/// An array's values (a table's lines), `BATCH` per system call, until its end or
/// `deadline`; `None` if the kernel has no batch lookup (then read them one by one).
fn lookup_batches<T: bytemuck::Pod>(map: &MapData, deadline: std::time::Instant) -> Option<Vec<T>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![0u32; BATCH];
    let mut values = vec![T::zeroed(); BATCH];
    // The array's cursor: the next line to read.
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut lines = Vec::new();
    for first in std::iter::once(true).chain(std::iter::repeat(false)) {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&cursor_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `BATCH` keys and values of the map's key and
        // value sizes (the map was opened typed with them) and at the cursor words, all
        // alive for the call; the kernel writes no more than `count` of each.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let errno = (result < 0).then(|| std::io::Error::last_os_error().raw_os_error());
        let count = (attr.count as usize).min(BATCH);
        lines.extend_from_slice(&values[..count]);
        match errno {
            // The end of the table.
            Some(Some(libc::ENOENT)) => break,
            // No batch lookup here (or for this map type): read line by line instead.
            Some(_) if first => return None,
            Some(_) => break,
            None => {}
        }
        cursor_in = cursor_out;
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    Some(lines)
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
