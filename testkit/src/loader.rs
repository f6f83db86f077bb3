//! The real `dns-xdp` binary run as a child process, with its JSON lines collected.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Path of the dns-xdp binary: `DNS_XDP_BIN`, or next to this test's target directory.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DNS_XDP_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/dns-xdp
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps")
        .join("dns-xdp");
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p dns-xdp`; `cargo xtask test` does)",
        path.display()
    );
    path
}

/// A bpffs mounted at a fresh directory of the initial mount namespace, for pins that
/// outlive the loader (`ip netns exec` gives each command a private /sys, whose bpffs
/// vanishes with it). Unmounted on drop, which releases whatever is pinned.
pub struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    pub fn new() -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dns-xdp-bpffs-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "mounting bpffs on {}", dir.display());
        Ok(Self { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn arg(&self) -> String {
        format!("--pin-root={}", self.dir.display())
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A running `dns-xdp attach`, killed on drop if still running.
pub struct Loader {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// The pins of a loader started with its own bpffs; unmounted after the child dies.
    _bpffs: Option<BpfFs>,
}

impl Loader {
    /// Runs `dns-xdp attach --iface <LINK> --json --stats-interval 0.1 <extra>` in
    /// `netns`, pinning in a bpffs of its own, and waits for its first report: from then
    /// on the program is counting.
    pub fn attach(netns: &crate::netns::Netns, extra: &[&str]) -> anyhow::Result<Self> {
        let bpffs = BpfFs::new()?;
        let mut loader = Self::attach_pinned(netns, &bpffs, extra)?;
        loader._bpffs = Some(bpffs);
        Ok(loader)
    }

    /// Like `attach`, pinning in `bpffs`, which outlives this loader.
    pub fn attach_pinned(
        netns: &crate::netns::Netns,
        bpffs: &BpfFs,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = netns.command(binary().to_str().context("non-UTF-8 path")?);
        command.args(["attach", "--iface", crate::netns::LINK, "--json"]);
        command.args(["--stats-interval", "0.1"]);
        command.arg(bpffs.arg());
        command.args(extra);
        let mut loader = Self::spawn(command)?;
        loader.next_json(Duration::from_secs(10))?;
        Ok(loader)
    }

    /// Starts `dns-xdp <args>` through `command` (e.g. `ip netns exec NS`), with its
    /// stdout and stderr collected line by line.
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dns-xdp")?;
        let lines = forward(child.stdout.take().expect("piped"));
        let stderr = forward(child.stderr.take().expect("piped"));
        Ok(Self {
            child,
            lines,
            stderr,
            _bpffs: None,
        })
    }

    /// Waits for the next stdout line that parses as JSON, up to `timeout`.
    pub fn next_json(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(value) = serde_json::from_str(&line) {
                        return Ok(value);
                    }
                }
                Err(_) => bail!(
                    "no JSON line from dns-xdp within {timeout:?}; stderr: {}",
                    self.stderr_text()
                ),
            }
        }
    }

    /// The newest JSON line: waits up to `timeout` for one, then takes the last queued.
    pub fn latest_json(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let mut latest = self.next_json(timeout)?;
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(value) = serde_json::from_str(&line) {
                latest = value;
            }
        }
        Ok(latest)
    }

    /// SIGKILL, as a crash would: no cleanup runs in the loader.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything written to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Sends SIGINT and waits (bounded) for the exit; returns the final report line.
    pub fn interrupt(mut self) -> anyhow::Result<(ExitStatus, serde_json::Value)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("dns-xdp did not exit within 10 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut last = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["event"] == "final"
            {
                last = Some(value);
            }
        }
        let final_line =
            last.with_context(|| format!("no final report; stderr: {}", self.stderr_text()))?;
        Ok((status, final_line))
    }
}

fn forward(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

impl Drop for Loader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one `dns-xdp` command (`status`, `set`, `detach`...) in `netns` against the
/// instances pinned in `bpffs`, logging warnings only; its output.
pub fn run_command(
    netns: &crate::netns::Netns,
    bpffs: &BpfFs,
    args: &[&str],
) -> std::process::Output {
    netns
        .command(binary().to_str().expect("a UTF-8 path"))
        .args(args)
        .arg(bpffs.arg())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running dns-xdp")
}
