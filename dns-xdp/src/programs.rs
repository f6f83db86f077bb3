//! Loading, configuring and attaching the kernel programs.

use std::ffi::CString;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use dns_xdp_common::{Config, Counters, PortSet};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns-xdp"));

/// Name of the main XDP program in the object.
pub const XDP_PROGRAM: &str = "dns_xdp";
/// Name of the XDP program that only returns `XDP_PASS`, the benchmarks' baseline.
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";

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

/// Builds the kernel-side configuration from a list of DNS ports.
pub fn config_for_ports(ports: &[u16]) -> Config {
    let mut dns_ports = PortSet::EMPTY;
    for &port in ports {
        dns_ports.insert(port);
    }
    Config { dns_ports }
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
    /// Loads every program of the object into the kernel and writes `config`.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(ebpf_object()?).map_err(|error| {
            let hint = load_hint(&error);
            anyhow::Error::new(error).context(format!("loading the eBPF object failed{hint}"))
        })?;
        for name in [XDP_PROGRAM, XDP_PASS_PROGRAM] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            program.load().map_err(|error| {
                let hint = program_load_hint(&error);
                anyhow::Error::new(error)
                    .context(format!("the kernel refused program {name}{hint}"))
            })?;
        }
        let mut programs = Self { ebpf };
        programs.set_config(config)?;
        Ok(programs)
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

/// Programs attached to an interface. Dropping it (or the process dying) detaches them:
/// the kernel holds the attachment only through this process's link file descriptor.
pub struct Attachment {
    programs: Programs,
    iface: String,
    link: Option<XdpLinkId>,
}

impl Attachment {
    /// Checks the preconditions, loads, configures and attaches. On any error nothing
    /// stays attached.
    pub fn attach(iface: &str, mode: Mode, config: &Config) -> anyhow::Result<Self> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("dns-xdp must run as root to load eBPF programs; try `sudo dns-xdp ...`");
        }
        if_index(iface)?;
        let mut programs = Programs::load(config)?;
        let link = programs
            .xdp(XDP_PROGRAM)?
            .attach(iface, mode.xdp_mode())
            .map_err(|error| attach_error(error, iface, mode))?;
        Ok(Self {
            programs,
            iface: iface.to_owned(),
            link: Some(link),
        })
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
        if let Some(link) = self.link.take() {
            self.programs
                .xdp(XDP_PROGRAM)?
                .detach(link)
                .with_context(|| format!("detaching from {}", self.iface))?;
        }
        Ok(())
    }
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
