//! Network namespaces joined by veth, removed on drop (also when a test fails).

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, bail};

/// A network namespace with a unique name; `Drop` deletes it and every link inside.
pub struct Netns {
    name: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; fails with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

impl Netns {
    /// Creates `dx-<role>-<pid>-<n>`, unique across parallel tests and test processes.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("dx-{role}-{}-{id}", std::process::id());
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Whether an XDP program is attached to `iface` in this namespace.
    pub fn xdp_attached(&self, iface: &str) -> bool {
        self.ip(&["-d", "link", "show", "dev", iface])
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("prog/xdp"))
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Turns reverse-path filtering off in this namespace, so that packets from spoofed
    /// sources with no route back reach its sockets, as on a server with a default route
    /// (the floods' answers to them then fail at once).
    pub fn accept_spoofed_sources(&self) -> anyhow::Result<()> {
        let status = self
            .command("sysctl")
            .args(["-qw", "net.ipv4.conf.all.rp_filter=0"])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "sysctl rp_filter=0 in {}: {status}",
            self.name
        );
        Ok(())
    }

    /// Applies an nftables ruleset (`nft -f -`) inside this namespace; fails with nft's
    /// complaint.
    pub fn nft(&self, rules: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft")?;
        nft.stdin
            .take()
            .context("nft's stdin")?
            .write_all(rules.as_bytes())?;
        let output = nft.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "nft refused {rules}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `work` on a thread that has joined this namespace: its sockets live here.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let handle = File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        let thread = thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            work()
        });
        thread
            .join()
            .map_err(|panic| anyhow::anyhow!("thread in {} panicked: {panic:?}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Interface name used on both ends (names are per namespace).
pub const LINK: &str = "dns0";
pub const SERVER_V4: &str = "198.18.0.1";
pub const CLIENT_V4: &str = "198.18.0.2";
pub const SERVER_V6: &str = "2001:2::1";
pub const CLIENT_V6: &str = "2001:2::2";

/// Two namespaces, `server` and `client`, joined by a veth pair named `LINK` on both
/// sides, addressed from 198.18.0.0/24 and 2001:2::/64 (the benchmarking ranges).
pub struct Pair {
    pub server: Netns,
    pub client: Netns,
}

impl Pair {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_queues(("srv", "cli"), 1)
    }

    /// Namespaces named after `roles`, joined by a veth with `queues` transmit and
    /// receive queues on each end.
    pub fn with_queues(roles: (&str, &str), queues: usize) -> anyhow::Result<Self> {
        let pair = Self {
            server: Netns::new(roles.0)?,
            client: Netns::new(roles.1)?,
        };
        pair.connect(queues)?;
        Ok(pair)
    }

    /// Makes the veth pair between the two namespaces, addressed and up (again, after a
    /// test deleted it: a new interface of the same name).
    pub fn connect(&self, queues: usize) -> anyhow::Result<()> {
        let queues = queues.max(1).to_string();
        let per_end = ["numtxqueues", &queues, "numrxqueues", &queues];
        let mut args = vec!["link", "add", "name", LINK];
        args.extend(per_end);
        args.extend([
            "type",
            "veth",
            "peer",
            "name",
            LINK,
            "netns",
            self.client.name(),
        ]);
        args.extend(per_end);
        self.server.ip(&args)?;
        for (netns, v4, v6) in [
            (&self.server, SERVER_V4, SERVER_V6),
            (&self.client, CLIENT_V4, CLIENT_V6),
        ] {
            netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", LINK])?;
            netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", LINK, "nodad"])?;
            netns.ip(&["link", "set", "dev", LINK, "up"])?;
        }
        Ok(())
    }
}
