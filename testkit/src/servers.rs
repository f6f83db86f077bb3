//! Real DNS servers from Debian, run in the foreground inside a test's namespace with
//! their files in a directory of the caller's: NSD (authoritative) and Unbound (a
//! resolver). Neither reaches anything but what the configuration names: NSD answers
//! its zones; Unbound forwards the zones it is given and validates nothing.

use std::{
    fs,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    process::{Process, output},
};

/// Writes `config` to `dir/<name>.conf`, has `checker` check it, runs `<name> -d -c` on
/// it in `netns`, and waits up to 15 s for `ready` (the server's log, `dir/<name>.log`,
/// in the error otherwise).
fn run_server(
    netns: &Netns,
    name: &'static str,
    checker: &str,
    config: &str,
    dir: &Path,
    ready: impl Fn() -> bool,
) -> anyhow::Result<Process> {
    let path = dir.join(format!("{name}.conf"));
    fs::write(&path, config)?;
    output(netns.command(checker).arg(&path))
        .with_context(|| format!("{checker} refused the configuration"))?;
    let mut server = Process::spawn(
        name,
        netns
            .command(name)
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        if !server.running() || Instant::now() > deadline {
            let log = fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            bail!("{name} did not start answering: {}", log.trim());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// NSD serving `zones` (name, zone file text) on `address`:53 in `netns`, one server
/// process per CPU. Its own response rate limiting (on by default in Debian's build:
/// 200 answers/s per /24) is off: tests measure what is in front of the server. EDNS
/// answers up to 4096 bytes, so large ones leave as IP fragments.
pub fn start_nsd(
    netns: &Netns,
    address: &str,
    zones: &[(&str, &str)],
    dir: &Path,
    ready: impl Fn() -> bool,
) -> anyhow::Result<Process> {
    fs::create_dir_all(dir)?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let d = dir.display();
    let mut config = format!(
        "server:\n  ip-address: {address}\n  port: 53\n  server-count: {cpus}\n  \
         reuseport: yes\n  username: \"\"\n  chroot: \"\"\n  database: \"\"\n  \
         zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
         pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  \
         hide-version: yes\n  tcp-count: 100\n  receive-buffer-size: 4194304\n  \
         ipv4-edns-size: 4096\n  ipv6-edns-size: 4096\n  \
         rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
         remote-control:\n  control-enable: no\n"
    );
    for (index, (name, text)) in zones.iter().enumerate() {
        let file = dir.join(format!("zone{index}"));
        fs::write(&file, text)?;
        config.push_str(&format!(
            "zone:\n  name: {name}\n  zonefile: \"{}\"\n",
            file.display()
        ));
    }
    run_server(netns, "nsd", "nsd-checkconf", &config, dir, ready)
}

/// A zone Unbound forwards, and how it reaches the zone's server.
pub struct Forward<'a> {
    pub zone: &'a str,
    pub server: &'a str,
    /// Only over TCP.
    pub tcp: bool,
}

/// Unbound listening on `address`:53 in `netns` for clients in 198.18.0.0/15, one
/// thread, no DNSSEC validation (the iterator module alone: it never looks for a trust
/// anchor), resolving only the `forwards` zones, with EDNS up to 4096 bytes upstream.
pub fn start_unbound(
    netns: &Netns,
    address: &str,
    forwards: &[Forward<'_>],
    dir: &Path,
    ready: impl Fn() -> bool,
) -> anyhow::Result<Process> {
    fs::create_dir_all(dir)?;
    let d = dir.display();
    let mut config = format!(
        "server:\n  interface: {address}\n  port: 53\n  outgoing-interface: {address}\n  \
         do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  \
         pidfile: \"{d}/unbound.pid\"\n  logfile: \"{d}/unbound.log\"\n  use-syslog: no\n  \
         verbosity: 1\n  num-threads: 1\n  do-ip6: no\n  \
         access-control: 198.18.0.0/15 allow\n  module-config: \"iterator\"\n  \
         qname-minimisation: no\n  edns-buffer-size: 4096\n  max-udp-size: 4096\n  \
         harden-referral-path: no\n  do-not-query-localhost: no\n  \
         ratelimit: 0\n  ip-ratelimit: 0\n\
         remote-control:\n  control-enable: no\n"
    );
    for forward in forwards {
        config.push_str(&format!(
            "forward-zone:\n  name: \"{}.\"\n  forward-addr: {}\n  forward-tcp-upstream: {}\n",
            forward.zone,
            forward.server,
            if forward.tcp { "yes" } else { "no" }
        ));
    }
    run_server(netns, "unbound", "unbound-checkconf", &config, dir, ready)
}
