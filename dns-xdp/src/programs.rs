//! Loading, configuring and attaching the kernel programs.

use std::ffi::CString;

use anyhow::{Context as _, bail};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        Program, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use dns_xdp_common::{
    Config, Counters, EgressCounters, FAMILY_V4, LIST_ALLOW, LIST_DENY, ListEntry, SourceKey,
    SourceState,
};
use ipnet::IpNet;

use crate::{conntrack, settings::Settings};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns-xdp"));

/// Name of the main XDP program in the object.
pub const XDP_PROGRAM: &str = "dns_xdp";
/// Name of the XDP program that only returns `XDP_PASS`, the benchmarks' baseline.
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";
/// Name of the TC egress program.
pub const EGRESS_PROGRAM: &str = "dns_xdp_egress";

/// The embedded eBPF object, or an error naming what was missing when it was built.
pub fn ebpf_object() -> anyhow::Result<&'static [u8]> {
    let missing = env!("DNS_XDP_EBPF_MISSING");
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this dns-xdp was built without its eBPF programs ({missing}); \
             run `cargo xtask setup` and rebuild"
        );
    }
    Ok(EBPF_OBJECT)
}

/// A source prefix with what happened to its queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    pub prefix: IpNet,
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

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    #[default]
    Auto,
    /// In the driver; fails if the driver has no XDP support.
    Native,
    /// Generic XDP in the kernel stack (works on every interface, slower).
    Skb,
}

impl Mode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

/// The loaded (verified) programs and their maps, not attached to anything.
/// Tests and benchmarks run these with BPF_PROG_TEST_RUN.
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads every program of the object into the kernel, sized and configured by
    /// `settings` (validated here: nothing is loaded if they are wrong).
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let config = settings.config()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("SOURCES", settings.table_size)
            .load(ebpf_object()?)
            .map_err(|error| {
                let hint = load_hint(&error);
                anyhow::Error::new(error).context(format!("loading the eBPF object failed{hint}"))
            })?;
        for name in [XDP_PROGRAM, XDP_PASS_PROGRAM, EGRESS_PROGRAM] {
            let program = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?;
            let loaded = match program {
                Program::Xdp(xdp) => xdp.load(),
                Program::SchedClassifier(classifier) => classifier.load(),
                _ => bail!("program {name} has an unexpected type"),
            };
            loaded.map_err(|error| {
                let hint = program_load_hint(&error);
                anyhow::Error::new(error)
                    .context(format!("the kernel refused program {name}{hint}"))
            })?;
        }
        let mut programs = Self { ebpf };
        programs.set_config(&config)?;
        for (list, allow) in [(&settings.allow, true), (&settings.deny, false)] {
            for prefix in list {
                programs.list_insert(*prefix, allow)?;
            }
        }
        Ok(programs)
    }

    /// Adds or replaces an allow (or deny) entry; its hit count starts at 0. Private: the
    /// config's list flags must say the list has entries.
    fn list_insert(&mut self, prefix: IpNet, allow: bool) -> anyhow::Result<()> {
        let entry = ListEntry {
            action: if allow { LIST_ALLOW } else { LIST_DENY },
            ..ListEntry::default()
        };
        let len = u32::from(prefix.prefix_len());
        let result = match prefix.addr() {
            IpAddr::V4(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], ListEntry> =
                    LpmTrie::try_from(self.ebpf.map_mut("LIST_V4").context("LIST_V4 missing")?)?;
                trie.insert(&Key::new(len, addr.octets()), entry, 0)
            }
            IpAddr::V6(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], ListEntry> =
                    LpmTrie::try_from(self.ebpf.map_mut("LIST_V6").context("LIST_V6 missing")?)?;
                trie.insert(&Key::new(len, addr.octets()), entry, 0)
            }
        };
        result.with_context(|| format!("adding {prefix} to the lists"))
    }

    /// Every list entry with its hits.
    pub fn lists(&self) -> anyhow::Result<Vec<ListReport>> {
        let mut reports = Vec::new();
        let v4: LpmTrie<&MapData, [u8; 4], ListEntry> =
            LpmTrie::try_from(self.ebpf.map("LIST_V4").context("LIST_V4 missing")?)?;
        for item in v4.iter() {
            let (key, entry) = item?;
            let addr = IpAddr::V4(Ipv4Addr::from(key.data()));
            reports.push(list_report(addr, key.prefix_len(), &entry)?);
        }
        let v6: LpmTrie<&MapData, [u8; 16], ListEntry> =
            LpmTrie::try_from(self.ebpf.map("LIST_V6").context("LIST_V6 missing")?)?;
        for item in v6.iter() {
            let (key, entry) = item?;
            let addr = IpAddr::V6(Ipv6Addr::from(key.data()));
            reports.push(list_report(addr, key.prefix_len(), &entry)?);
        }
        Ok(reports)
    }

    /// Every source prefix in the table, with its counters.
    pub fn sources(&self) -> anyhow::Result<Vec<SourceReport>> {
        let map: HashMap<&MapData, SourceKey, SourceState> =
            HashMap::try_from(self.ebpf.map("SOURCES").context("SOURCES map missing")?)?;
        let mut sources = Vec::new();
        for item in map.iter() {
            // An entry evicted while we walk ends the walk early; what we have is still true.
            let Ok((key, state)) = item else { break };
            sources.push(SourceReport::new(&key, &state));
        }
        Ok(sources)
    }

    /// The `limit` sources whose buckets refused the most queries (none refused: none).
    pub fn top_sources(&self, limit: usize) -> anyhow::Result<Vec<SourceReport>> {
        let mut sources: Vec<_> = self
            .sources()?
            .into_iter()
            .filter(|source| source.refused() > 0)
            .collect();
        sources.sort_by(|a, b| {
            (b.refused(), b.passed, a.prefix).cmp(&(a.refused(), a.passed, b.prefix))
        });
        sources.truncate(limit);
        Ok(sources)
    }

    /// Writes the configuration map; the programs see it from their next packet on.
    pub fn set_config(&mut self, config: &Config) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Config> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?;
        map.set(0, config, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, Counters> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").context("COUNTERS map missing")?)?;
        let mut total = Counters::default();
        for per_cpu in map.get(&0, 0).context("reading the COUNTERS map")?.iter() {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// Egress counters summed over all CPUs.
    pub fn egress_counters(&self) -> anyhow::Result<EgressCounters> {
        let map: PerCpuArray<&MapData, EgressCounters> = PerCpuArray::try_from(
            self.ebpf
                .map("EGRESS_COUNTERS")
                .context("EGRESS_COUNTERS map missing")?,
        )?;
        let mut total = EgressCounters::default();
        for per_cpu in map
            .get(&0, 0)
            .context("reading the EGRESS_COUNTERS map")?
            .iter()
        {
            total.add(per_cpu);
        }
        Ok(total)
    }

    /// The loaded egress program, e.g. to test-run it.
    pub fn egress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(EGRESS_PROGRAM)
            .with_context(|| format!("program {EGRESS_PROGRAM} missing"))?
            .try_into()?)
    }

    /// A loaded program by name, e.g. to test-run it.
    pub fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// Starts forwarding the programs' aya-log records to the `log` crate's logger.
    pub fn logger(&mut self) -> anyhow::Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the eBPF logger")
    }
}

/// Everything attached to an interface, as one unit: the XDP program, the TC egress
/// program and the conntrack bypass rules. Dropping it (or the process dying) detaches
/// the programs, since only this process's link file descriptors hold them; the bypass
/// rules are removed on drop and by `detach`, but outlive a killed process until
/// `dns-xdp detach` runs.
pub struct Attachment {
    programs: Programs,
    iface: String,
    xdp_link: Option<XdpLinkId>,
    egress_link: Option<SchedClassifierLinkId>,
    bypass: bool,
}

impl Attachment {
    /// Checks the preconditions, loads, configures and attaches. On any error nothing
    /// stays attached and no rule stays installed.
    pub fn attach(iface: &str, mode: Mode, settings: &Settings) -> anyhow::Result<Self> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("dns-xdp must run as root to load eBPF programs; try `sudo dns-xdp ...`");
        }
        if_index(iface)?;
        let mut programs = Programs::load(settings)?;
        let xdp_link = programs
            .xdp(XDP_PROGRAM)?
            .attach(iface, mode.xdp_mode())
            .map_err(|error| attach_error(error, iface, mode))?;
        // From here on, an early return drops `attachment`, which undoes what was done.
        let mut attachment = Self {
            programs,
            iface: iface.to_owned(),
            xdp_link: Some(xdp_link),
            egress_link: None,
            bypass: false,
        };
        let egress_link = attachment
            .programs
            .egress()?
            .attach(iface, TcAttachType::Egress)
            .with_context(|| format!("attaching the egress program to {iface} (TC/TCX)"))?;
        attachment.egress_link = Some(egress_link);
        if settings.conntrack_bypass {
            attachment.bypass = true;
            conntrack::install(iface, &settings.ports)?;
        }
        Ok(attachment)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn programs(&mut self) -> &mut Programs {
        &mut self.programs
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.programs.counters()
    }

    /// Detaches now and reports failure (dropping detaches too, silently).
    pub fn detach(mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.bypass) {
            conntrack::remove(&self.iface)?;
        }
        if let Some(link) = self.egress_link.take() {
            self.programs
                .egress()?
                .detach(link)
                .with_context(|| format!("detaching the egress program from {}", self.iface))?;
        }
        if let Some(link) = self.xdp_link.take() {
            self.programs
                .xdp(XDP_PROGRAM)?
                .detach(link)
                .with_context(|| format!("detaching from {}", self.iface))?;
        }
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.bypass
            && let Err(error) = conntrack::remove(&self.iface)
        {
            log::error!("{error:#}");
        }
        // The links go with `programs`.
    }
}

fn list_report(addr: IpAddr, len: u32, entry: &ListEntry) -> anyhow::Result<ListReport> {
    Ok(ListReport {
        prefix: IpNet::new(addr, u8::try_from(len)?)?,
        allow: entry.action == LIST_ALLOW,
        hits: entry.hits,
    })
}

/// The index of a network interface, or an error that says how to find the right name.
pub fn if_index(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface).with_context(|| format!("invalid interface name {iface:?}"))?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no network interface named {iface:?}; `ip link` lists the interfaces"),
        index => Ok(index),
    }
}

fn os_error(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    }
}

fn attach_error(error: ProgramError, iface: &str, mode: Mode) -> anyhow::Error {
    let message = match os_error(&error) {
        Some(libc::EBUSY | libc::EEXIST) => format!(
            "another XDP program is already attached to {iface} (see `ip link show dev {iface}`); \
             stop its owner, or remove a netlink attachment with `ip link set dev {iface} xdp off`"
        ),
        Some(libc::EOPNOTSUPP) if mode == Mode::Native => {
            format!("the driver of {iface} has no native XDP support; use --mode skb (or auto)")
        }
        Some(libc::EOPNOTSUPP | libc::EINVAL) => format!(
            "the kernel cannot attach XDP programs to {iface} in {mode:?} mode; \
             the kernel lacks XDP support for this interface"
        ),
        _ => format!("attaching to {iface} failed"),
    };
    anyhow::Error::new(error).context(message)
}

fn load_hint(error: &aya::EbpfError) -> &'static str {
    let text = error.to_string();
    if text.contains("Operation not permitted") {
        "; loading eBPF needs root (CAP_BPF and CAP_NET_ADMIN)"
    } else if text.contains("Function not implemented") {
        "; this kernel has no BPF support (CONFIG_BPF_SYSCALL)"
    } else {
        ""
    }
}

fn program_load_hint(error: &ProgramError) -> &'static str {
    match os_error(error).or_else(|| {
        let ProgramError::LoadError { io_error, .. } = error else {
            return None;
        };
        io_error.raw_os_error()
    }) {
        Some(libc::EPERM) => "; loading eBPF needs root (CAP_BPF and CAP_NET_ADMIN)",
        Some(libc::ENOSYS) => "; this kernel has no BPF support (CONFIG_BPF_SYSCALL)",
        Some(libc::EINVAL) => "; this kernel may lack XDP support",
        _ => "",
    }
}
