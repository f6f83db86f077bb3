//! Real DNS servers from Debian, run in the foreground inside a test's namespace with
//! their files in a directory of the caller's: NSD and BIND (authoritative; BIND with
//! DNS cookies) and Unbound (a resolver). None reaches anything but what the
//! configuration names: NSD and BIND answer their zones and notify no one; Unbound
//! forwards the zones it is given and validates nothing.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    dns::Client,
    netns::Netns,
    packet::dns_query,
    process::{Process, output},
};

/// Writes `config` to `dir/<name>.conf`, has `checker` check it, runs `<name>
/// <foreground> -c` on it in `netns`, and waits up to 15 s for `ready` (the server's
/// log, `dir/<name>.log`, in the error otherwise).
fn run_server(
    netns: &Netns,
    name: &'static str,
    foreground: &str,
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
            .arg(foreground)
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
    run_server(netns, "nsd", "-d", "nsd-checkconf", &config, dir, ready)
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
    run_server(
        netns,
        "unbound",
        "-d",
        "unbound-checkconf",
        &config,
        dir,
        ready,
    )
}

/// The zone the BIND tests serve: `EXAMPLE_ZONE` with its name server at the server's
/// address and `www` at 198.18.0.80.
pub fn example_zone() -> String {
    format!(
        "$ORIGIN {EXAMPLE_ZONE}.\n$TTL 300\n\
         @ IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n\
         @ IN NS ns1\n\
         ns1 IN A {}\n\
         www IN A 198.18.0.80\n",
        crate::netns::SERVER_V4
    )
}

/// The origin of `example_zone`.
pub const EXAMPLE_ZONE: &str = "example.com";

/// BIND 9 (`named`) serving `zones` (name, zone file text) as their primary on
/// `address`:53 in `netns`, with DNS cookies (RFC 7873, the SipHash-2-4 server cookie of
/// RFC 9018): it makes server cookies with the first of `cookie_secrets` and accepts
/// those of all of them (each 32 hex digits: 128 bits, all SipHash-2-4 takes; none: a
/// random secret of BIND's). It answers without a valid server cookie too
/// (`require-server-cookie no`); it does not recurse, validate, rate-limit or notify,
/// has no control channel, and writes only in `dir`: `named.log`, and `queries.log`,
/// where each query says whether it carried a server cookie BIND verified
/// ([`bind_queries`]). Returns once it answers a UDP query on `address`.
pub fn start_bind(
    netns: &Netns,
    address: &str,
    zones: &[(&str, &str)],
    cookie_secrets: &[&str],
    dir: &Path,
) -> anyhow::Result<Process> {
    let ip: IpAddr = address
        .parse()
        .with_context(|| format!("BIND's address {address}"))?;
    for secret in cookie_secrets {
        ensure!(
            secret.len() == 32 && secret.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "cookie secret {secret:?}: SipHash-2-4 takes 32 hex digits (128 bits)"
        );
    }
    fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (index, (name, text)) in zones.iter().enumerate() {
        let file = dir.join(format!("zone{index}.db"));
        fs::write(&file, text)?;
        files.push((*name, file.display().to_string()));
    }
    let config = bind_config(ip, &files, cookie_secrets, &dir.display().to_string());
    let probe = SocketAddr::new(ip, 53);
    let name = zones
        .first()
        .map_or("probe.invalid", |&(name, _)| name)
        .to_owned();
    let client = Client {
        timeout: Duration::from_millis(200),
        ..Client::default()
    };
    // Any answer will do (REFUSED too): a query from inside the server's namespace.
    let ready = || {
        let name = name.clone();
        netns
            .run(move || client.udp(probe, &dns_query(0x0b1d, &name)).is_ok())
            .unwrap_or(false)
    };
    run_server(netns, "named", "-f", "named-checkconf", &config, dir, ready)
}

/// named.conf for [`start_bind`]: `zones` are (name, file), every path BIND would write
/// is in `dir`.
fn bind_config(address: IpAddr, zones: &[(&str, String)], secrets: &[&str], dir: &str) -> String {
    let (v4, v6) = match address {
        IpAddr::V4(_) => (address.to_string(), "none".to_owned()),
        IpAddr::V6(_) => ("none".to_owned(), address.to_string()),
    };
    let secrets: String = secrets
        .iter()
        .map(|secret| format!("\tcookie-secret \"{secret}\";\n"))
        .collect();
    let mut config = format!(
        "options {{
\tdirectory \"{dir}\";
\tpid-file \"{dir}/named.pid\";
\tlock-file \"{dir}/named.lock\";
\tsession-keyfile \"{dir}/session.key\";
\tmanaged-keys-directory \"{dir}\";
\tdump-file \"{dir}/named_dump.db\";
\tstatistics-file \"{dir}/named.stats\";
\tmemstatistics-file \"{dir}/named.memstats\";
\trecursing-file \"{dir}/named.recursing\";
\tsecroots-file \"{dir}/named.secroots\";
\tlisten-on port 53 {{ {v4}; }};
\tlisten-on-v6 port 53 {{ {v6}; }};
\trecursion no;
\tdnssec-validation no;
\tnotify no;
\tcookie-algorithm siphash24;
{secrets}\tanswer-cookie yes;
\trequire-server-cookie no;
\tquerylog yes;
}};
controls {{ }};
logging {{
\tchannel named {{ file \"{dir}/named.log\"; severity info; print-time yes; print-category yes; print-severity yes; }};
\tchannel queries {{ file \"{dir}/queries.log\" size 64m; print-time yes; }};
\tcategory default {{ named; }};
\tcategory queries {{ queries; }};
}};
"
    );
    for (name, file) in zones {
        config.push_str(&format!(
            "zone \"{name}\" {{ type primary; file \"{file}\"; }};\n"
        ));
    }
    config
}

/// What BIND made of a query's DNS cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSeen {
    /// No COOKIE option.
    None,
    /// A client cookie alone, or with a server cookie BIND did not verify (`K`).
    Unverified,
    /// A server cookie BIND verified with one of its secrets (`V`).
    Verified,
}

/// A query as BIND's query log has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedQuery {
    pub client: IpAddr,
    pub name: String,
    pub qtype: String,
    pub cookie: CookieSeen,
    pub tcp: bool,
}

/// The queries a [`start_bind`] server in `dir` has logged so far, oldest first.
pub fn bind_queries(dir: &Path) -> anyhow::Result<Vec<LoggedQuery>> {
    let log = fs::read_to_string(dir.join("queries.log"))
        .with_context(|| format!("reading {}/queries.log", dir.display()))?;
    log.lines()
        .filter(|line| line.contains(" query: "))
        .map(|line| parse_query_line(line).with_context(|| format!("query log line {line:?}")))
        .collect()
}

/// One line of BIND 9.18's query log: `<time> client @0x... <ip>#<port> (<name>): query:
/// <name> <class> <type> <flags> (<server>)`, the flags `+` (RD), `S` (signed),
/// `E(<version>)`, `T` (TCP), `D` (DO), `C` (CD), then `V` or `K` (cookie).
fn parse_query_line(line: &str) -> anyhow::Result<LoggedQuery> {
    let (head, query) = line.split_once(" query: ").context("no query")?;
    let client = head
        .split_whitespace()
        .find_map(|word| word.rsplit_once('#'))
        .context("no client address")?
        .0
        .parse()?;
    let fields: Vec<&str> = query.split_whitespace().collect();
    ensure!(fields.len() >= 4, "too few fields");
    let flags = fields[3];
    let cookie = if flags.ends_with('V') {
        CookieSeen::Verified
    } else if flags.ends_with('K') {
        CookieSeen::Unverified
    } else {
        CookieSeen::None
    };
    Ok(LoggedQuery {
        client,
        name: fields[0].to_owned(),
        qtype: fields[2].to_owned(),
        cookie,
        tcp: flags.contains('T'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_listens_on_one_address_and_makes_cookies_with_the_first_secret() {
        let zones = [("example.com", "/d/zone0.db".to_owned())];
        let secrets = [
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        ];
        let v6 = bind_config("2001:2::1".parse().unwrap(), &zones, &secrets, "/d");
        assert!(v6.contains("listen-on port 53 { none; };"));
        assert!(v6.contains("listen-on-v6 port 53 { 2001:2::1; };"));
        let first = v6.find(secrets[0]).unwrap();
        assert!(first < v6.find(secrets[1]).unwrap());
        assert!(v6.contains("zone \"example.com\" { type primary; file \"/d/zone0.db\"; };"));
        let v4 = bind_config("198.18.0.1".parse().unwrap(), &zones, &[], "/d");
        assert!(v4.contains("listen-on port 53 { 198.18.0.1; };"));
        assert!(!v4.contains("cookie-secret"));
        // Every file BIND is given is in the directory.
        for path in v4.split('"').skip(1).step_by(2).filter(|s| s.contains('/')) {
            assert!(path.starts_with("/d/") || path == "/d", "{path}");
        }
    }

    #[test]
    fn reads_bind_query_log_lines() {
        // Captured from BIND 9.18.49 (Debian 12) as `start_bind` configures it.
        let lines = [
            "07-Dec-2026 23:11:56.808 client @0x7f6bb02ef098 198.18.0.1#60618 (example.com): \
             query: example.com IN A + (198.18.0.1)",
            "07-Dec-2026 23:11:56.824 client @0x7f6bb3430098 198.18.0.2#53072 (www.example.com): \
             query: www.example.com IN A +E(0)K (198.18.0.1)",
            "07-Dec-2026 23:11:56.848 client @0x7f6bb02ef098 198.18.0.2#55839 (www.example.com): \
             query: www.example.com IN A +E(0)V (198.18.0.1)",
        ];
        let queries: Vec<LoggedQuery> = lines
            .iter()
            .map(|line| parse_query_line(line).unwrap())
            .collect();
        assert_eq!(
            queries[1],
            LoggedQuery {
                client: "198.18.0.2".parse().unwrap(),
                name: "www.example.com".to_owned(),
                qtype: "A".to_owned(),
                cookie: CookieSeen::Unverified,
                tcp: false,
            }
        );
        let seen: Vec<CookieSeen> = queries.iter().map(|query| query.cookie).collect();
        assert_eq!(
            seen,
            [
                CookieSeen::None,
                CookieSeen::Unverified,
                CookieSeen::Verified
            ]
        );
        assert_eq!(queries[0].client.to_string(), "198.18.0.1");
    }
}
