//! Loading, configuring and attaching the kernel programs.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Program, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

use crate::{
    conntrack,
    maps::{Maps, check_pinned_layout, pinned_maps},
    pins::{self, ConfigLock, InstanceLock},
    settings::Settings,
};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns-xdp"));

/// Name of the main XDP program in the object.
pub const XDP_PROGRAM: &str = "dns_xdp";
/// Name of the TC egress program.
pub const EGRESS_PROGRAM: &str = "dns_xdp_egress";

/// The programs of the production object, all loaded by `Programs::load`, in that order.
/// (Test and benchmark programs are in the test kit's own object.)
pub const PROGRAMS: [&str; 2] = [XDP_PROGRAM, EGRESS_PROGRAM];

/// Instructions the kernel's verifier may process to load one program (its
/// BPF_COMPLEXITY_LIMIT_INSNS): past it, the load fails with E2BIG.
pub const VERIFIER_LIMIT: u32 = 1_000_000;
/// What each program may cost the verifier, checked by the tests: half the limit.
/// The count depends on the kernel as well as the code (a program that needed 42 % of
/// the limit where it was written needed over 100 % on a fresh machine of the same
/// kind), so the margin is the defence; see docs/ARCHITECTURE.md, "Verifier budget".
pub const VERIFIER_BUDGET: u32 = VERIFIER_LIMIT / 2;

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
    maps: Maps,
}

impl Programs {
    /// Loads every program of the object into the kernel, sized and configured by
    /// `settings` (validated here: nothing is loaded if they are wrong). With `pins`, the
    /// maps are pinned in that directory, or reused from it when they are already there:
    /// counters and buckets outlive the process that made them.
    pub fn load(settings: &Settings, pins: Option<&Path>) -> anyhow::Result<Self> {
        let config = settings.config()?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(
            dns_xdp_common::maps::SOURCES.name,
            dns_xdp_common::source_lines(settings.table_size),
        );
        if let Some(dir) = pins {
            check_pinned_layout(dir)?;
            for name in pinned_maps() {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(ebpf_object()?).map_err(|error| {
            let hint = load_hint(&error);
            anyhow::Error::new(error).context(format!("loading the eBPF object failed{hint}"))
        })?;
        for name in PROGRAMS {
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
        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        // Pinned maps may be shared with `set`, `allow` and `deny` from other shells.
        let _writer = pins.map(ConfigLock::acquire).transpose()?;
        maps.init_source_hash()?;
        maps.replace_config(&config)?;
        maps.set_lists(&settings.allow, &settings.deny)?;
        Ok(Self { ebpf, maps })
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The reader of the sampled queries' ring (once: a ring has one reader).
    pub fn take_samples(&mut self) -> anyhow::Result<crate::samples::SampleReader> {
        let map = self
            .ebpf
            .take_map(dns_xdp_common::maps::SAMPLES.name)
            .context("SAMPLES was taken already")?;
        crate::samples::SampleReader::new(map)
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The loaded egress program, e.g. to test-run it.
    pub fn egress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(EGRESS_PROGRAM)
            .with_context(|| format!("program {EGRESS_PROGRAM} missing"))?
            .try_into()?)
    }

    /// A loaded XDP program by name, e.g. to test-run it.
    pub fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// How many instructions the verifier processed to load each program
    /// (`bpf_prog_info.verified_insns`), in `PROGRAMS` order.
    pub fn verified_instructions(&mut self) -> anyhow::Result<Vec<(&'static str, u32)>> {
        let mut counts = Vec::new();
        for name in PROGRAMS {
            let program = self
                .ebpf
                .program(name)
                .with_context(|| format!("program {name} missing"))?;
            let info = match program {
                Program::Xdp(xdp) => xdp.info()?,
                Program::SchedClassifier(classifier) => classifier.info()?,
                _ => bail!("program {name} has an unexpected type"),
            };
            let count = info
                .verified_instruction_count()
                .context("the kernel does not report verified instructions (Linux < 5.16)")?;
            counts.push((name, count));
        }
        Ok(counts)
    }

    /// Starts forwarding the programs' aya-log records to the `log` crate's logger.
    pub fn logger(&mut self) -> anyhow::Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the eBPF logger")
    }
}

/// Pin of the XDP link, in an instance's pin directory.
const XDP_LINK_PIN: &str = "xdp_link";
/// Pin of the TC egress link.
const EGRESS_LINK_PIN: &str = "egress_link";

/// The default root of the pin directories: `<root>/<iface>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dns-xdp";

/// The pin directory of the instance on `iface`.
pub fn pin_dir(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(iface)
}

/// Everything attached to an interface, as one unit: the XDP program, the TC egress
/// program (both held by pinned links) and the conntrack bypass rules.
///
/// The links and maps are pinned in the instance's directory, so the attachment does not
/// depend on this process: if it dies, the programs stay attached and counting, and the
/// next `attach` on the interface adopts them, replacing the programs through their links
/// with no moment unprotected and keeping counters and buckets. `detach` (or
/// `dns-xdp detach` from any shell) removes programs, rules and pins.
pub struct Attachment {
    programs: Programs,
    iface: String,
    dir: PathBuf,
    xdp_link: Option<FdLink>,
    egress_link: Option<FdLink>,
    /// Whether the programs replaced ones a previous loader left attached.
    pub adopted: bool,
    lock: InstanceLock,
    mode: Mode,
    /// The interface's index when the programs were attached to it; `None` while it is gone.
    ifindex: Option<u32>,
}

/// What `Attachment::follow_interface` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceEvent {
    /// The interface is gone: the programs went with it; state and rules are kept.
    Gone,
    /// Renamed (to the name given): the programs stay on it (they are attached by
    /// index), but the bypass rules match the old name, and the loader waits for an
    /// interface of its name.
    Renamed(String),
    /// An interface of that name is there again (index given): the programs are attached
    /// to it, with the state they had.
    Returned(u32),
}

impl Attachment {
    /// Checks the preconditions, loads, configures and attaches (or adopts what a previous
    /// loader left pinned). On error, a fresh attachment leaves nothing behind; an adopted
    /// one stays as the previous loader left it.
    pub fn attach(
        iface: &str,
        mode: Mode,
        settings: &Settings,
        pin_root: &Path,
    ) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("dns-xdp must run as root to load eBPF programs; try `sudo dns-xdp ...`");
        }
        if_index(iface)?;
        let dir = pin_dir(pin_root, iface);
        pins::prepare(pin_root, &dir)?;
        let lock = InstanceLock::acquire(&dir, iface)?;
        let adopting = dir.join(XDP_LINK_PIN).exists();
        // Pins this attach did not make are not its to remove when it fails.
        let had_pins = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
        let ifindex = if_index(iface)?;
        let result =
            Self::attach_locked(iface, mode, settings, &dir, adopting, lock).map(|attachment| {
                Self {
                    mode,
                    ifindex: Some(ifindex),
                    ..attachment
                }
            });
        if result.is_err() && !adopting && !had_pins {
            let _ = conntrack::remove(iface);
            let _ = pins::remove_all(&dir);
        }
        result
    }

    fn attach_locked(
        iface: &str,
        mode: Mode,
        settings: &Settings,
        dir: &Path,
        adopting: bool,
        lock: InstanceLock,
    ) -> anyhow::Result<Self> {
        let mut programs = Programs::load(settings, Some(dir))?;
        let table_size = programs.maps().table_size()?;
        if table_size != settings.table_slots() {
            log::warn!(
                "the source table pinned in {} has {table_size} entries; --table-size {} \
                 applies after `dns-xdp detach`",
                dir.display(),
                settings.table_size
            );
        }
        let xdp = programs.xdp(XDP_PROGRAM)?;
        let xdp_link = if adopting {
            let pinned = PinnedLink::from_pin(dir.join(XDP_LINK_PIN))
                .context("opening the pinned XDP link")?;
            let pinned = FdLink::from(pinned);
            check_adoptable(&pinned, iface, dir)?;
            let link = XdpLink::try_from(pinned)?;
            let id = xdp
                .attach_to_link(link)
                .context("replacing the XDP program through its link")?;
            FdLink::try_from(xdp.take_link(id)?)?
        } else {
            let id = xdp
                .attach(iface, mode.xdp_mode())
                .map_err(|error| attach_error(error, iface, mode))?;
            let link = FdLink::try_from(xdp.take_link(id)?)?;
            FdLink::from(
                link.pin(dir.join(XDP_LINK_PIN))
                    .context("pinning the XDP link")?,
            )
        };
        let egress = programs.egress()?;
        let egress_pin = dir.join(EGRESS_LINK_PIN);
        let egress_link = if egress_pin.exists() {
            let pinned =
                PinnedLink::from_pin(&egress_pin).context("opening the pinned egress link")?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
            let id = egress
                .attach_to_link(link)
                .context("replacing the egress program through its link")?;
            FdLink::try_from(egress.take_link(id)?)?
        } else {
            let id = egress
                .attach(iface, TcAttachType::Egress)
                .with_context(|| format!("attaching the egress program to {iface} (TC/TCX)"))?;
            let link = FdLink::try_from(egress.take_link(id)?)?;
            FdLink::from(link.pin(&egress_pin).context("pinning the egress link")?)
        };
        if settings.conntrack_bypass {
            conntrack::install(iface, &settings.ports)?;
        } else {
            conntrack::remove(iface)?;
        }
        Ok(Self {
            programs,
            iface: iface.to_owned(),
            dir: dir.to_owned(),
            xdp_link: Some(xdp_link),
            egress_link: Some(egress_link),
            adopted: adopting,
            lock,
            mode,
            ifindex: None,
        })
    }

    /// Follows the interface by name: when it disappears, says so (the programs went with
    /// it; the maps, pins and rules stay); when an interface of that name appears again
    /// (a new index: deleted and re-created, or replaced), attaches the loaded programs
    /// to it as on a fresh attach, with the counters, buckets and lists they had. The
    /// conntrack rules match by name and apply again by themselves.
    pub fn follow_interface(&mut self) -> anyhow::Result<Option<InterfaceEvent>> {
        let now = if_index(&self.iface).ok();
        if now == self.ifindex {
            return Ok(None);
        }
        let Some(index) = now else {
            let renamed = self.ifindex.and_then(if_name);
            self.ifindex = None;
            return Ok(Some(match renamed {
                Some(name) => InterfaceEvent::Renamed(name),
                None => InterfaceEvent::Gone,
            }));
        };
        // The old links held programs on an interface that no longer exists.
        self.xdp_link.take();
        self.egress_link.take();
        for pin in [XDP_LINK_PIN, EGRESS_LINK_PIN] {
            let _ = std::fs::remove_file(self.dir.join(pin));
        }
        let (iface, mode) = (self.iface.clone(), self.mode);
        let xdp = self.programs.xdp(XDP_PROGRAM)?;
        let id = xdp
            .attach(&iface, mode.xdp_mode())
            .map_err(|error| attach_error(error, &iface, mode))?;
        let link = FdLink::try_from(xdp.take_link(id)?)?;
        self.xdp_link = Some(FdLink::from(
            link.pin(self.dir.join(XDP_LINK_PIN))
                .context("pinning the XDP link")?,
        ));
        let egress = self.programs.egress()?;
        let id = egress
            .attach(&iface, TcAttachType::Egress)
            .with_context(|| format!("attaching the egress program to {iface} (TC/TCX)"))?;
        let link = FdLink::try_from(egress.take_link(id)?)?;
        self.egress_link = Some(FdLink::from(
            link.pin(self.dir.join(EGRESS_LINK_PIN))
                .context("pinning the egress link")?,
        ));
        self.ifindex = Some(index);
        Ok(Some(InterfaceEvent::Returned(index)))
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn programs(&mut self) -> &mut Programs {
        &mut self.programs
    }

    pub fn maps(&self) -> &Maps {
        self.programs.maps()
    }

    /// Removes everything: rules, links (the programs detach) and pins.
    pub fn detach(mut self) -> anyhow::Result<()> {
        conntrack::remove(&self.iface)?;
        pins::remove_all(&self.dir)?;
        // Unpinned and closed, a link has no holder left: the kernel detaches it.
        self.xdp_link.take();
        self.egress_link.take();
        self.lock.remove();
        Ok(())
    }

    /// Ends this process's part and leaves the attachment pinned, for the next loader to
    /// adopt (a restart or an upgrade without a gap).
    pub fn leave(self) {}
}

/// Refuses to adopt the pinned XDP link `link` unless its program is the one attached to
/// `iface` in this namespace: pins can be shared (`--pin-root`) between namespaces, and
/// an interface of the same name elsewhere, or one deleted since, is not this one.
fn check_adoptable(link: &FdLink, iface: &str, dir: &Path) -> anyhow::Result<()> {
    let pinned = link
        .info()
        .context("reading the pinned XDP link")?
        .program_id();
    let here = crate::status::attached_xdp(iface)?;
    match here {
        Some(attached) if attached.id == pinned => Ok(()),
        here => bail!(
            "the XDP link pinned in {} holds program {pinned}, but {iface} here has {}: the pins \
             belong to an interface of that name in another namespace, or to one deleted since; \
             use another --pin-root, or remove them with `dns-xdp detach --iface {iface}`",
            dir.display(),
            here.map_or("no XDP program".to_owned(), |attached| format!(
                "program {} ({})",
                attached.id, attached.name
            ))
        ),
    }
}

/// Removes what an instance on `iface` left pinned, and its bypass rules, from any shell.
/// Returns what it removed.
pub fn detach_pinned(pin_root: &Path, iface: &str) -> anyhow::Result<Vec<String>> {
    let dir = pin_dir(pin_root, iface);
    let mut removed = Vec::new();
    let lock = if dir.exists() {
        Some(InstanceLock::acquire(&dir, iface)?)
    } else {
        None
    };
    if conntrack::installed(iface)?.is_some() {
        conntrack::remove(iface)?;
        removed.push("conntrack bypass rules".to_owned());
    }
    if dir.exists() {
        for (pin, what) in [
            (XDP_LINK_PIN, "XDP program"),
            (EGRESS_LINK_PIN, "TC egress program"),
        ] {
            if dir.join(pin).exists() {
                removed.push(what.to_owned());
            }
        }
        pins::remove_all(&dir)?;
        removed.push(format!("pins in {}", dir.display()));
    }
    if let Some(lock) = lock {
        lock.remove();
    }
    Ok(removed)
}

/// The name of the interface with index `index`, if there is one.
fn if_name(index: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The index of a network interface, or an error that says how to find the right name.
pub fn if_index(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface).with_context(|| format!("invalid interface name {iface:?}"))?;
    // SAFETY: a valid C string.
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
    match errno(error) {
        Some(libc::EPERM) => "; loading eBPF needs root (CAP_BPF and CAP_NET_ADMIN)",
        Some(libc::ENOSYS) => "; this kernel has no BPF support (CONFIG_BPF_SYSCALL)",
        _ => "",
    }
}

/// The errno behind `error`: the first I/O error in its chain of sources.
fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(code) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        next = current.source();
    }
    None
}

fn program_load_hint(error: &ProgramError) -> &'static str {
    match os_error(error).or_else(|| errno(error)) {
        Some(libc::EPERM) => "; loading eBPF needs root (CAP_BPF and CAP_NET_ADMIN)",
        Some(libc::ENOSYS) => "; this kernel has no BPF support (CONFIG_BPF_SYSCALL)",
        Some(libc::EINVAL) => "; this kernel may lack XDP support",
        _ => "",
    }
}
