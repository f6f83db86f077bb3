//! The loader's refusals: each bad input gets one clear line, a non-zero exit, and leaves
//! nothing attached. Needs root (and runs one case as nobody).

use std::{
    process::{Command, Output},
    time::Duration,
};

use dns_xdp_testkit::{
    loader::{self, Loader},
    netns::{LINK, Netns, Pair},
};

fn dns_xdp(netns: Option<&Netns>, args: &[&str]) -> Output {
    let binary = loader::binary();
    let mut command = match netns {
        Some(netns) => netns.command(binary.to_str().unwrap()),
        None => Command::new(&binary),
    };
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running dns-xdp")
}

/// Asserts a failed run whose stderr is one line containing `needle`.
fn assert_refused(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    if code == 1 {
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("dns-xdp: error: "), "{stderr}");
    }
}

#[test]
fn unknown_interface_is_named() {
    let netns = Netns::new("cli").unwrap();
    let output = dns_xdp(Some(&netns), &["attach", "--iface", "nosuch0"]);
    assert_refused(&output, 1, "no network interface named \"nosuch0\"");
}

#[test]
fn non_root_is_told_to_use_root() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(loader::binary())
        .args(["attach", "--iface", "lo"])
        .output()
        .expect("running setpriv (util-linux)");
    assert_refused(&output, 1, "must run as root");
}

#[test]
fn native_mode_on_a_driver_without_xdp_is_refused_and_leaves_nothing() {
    let netns = Netns::new("cli").unwrap();
    let output = dns_xdp(
        Some(&netns),
        &["attach", "--iface", "lo", "--mode", "native"],
    );
    assert_refused(&output, 1, "has no native XDP support; use --mode skb");
    assert!(!netns.xdp_attached("lo"));
}

#[test]
fn second_attach_is_refused_and_the_first_keeps_running() {
    let pair = Pair::new().unwrap();
    let mut first = Loader::attach(&pair.server, &[]).unwrap();

    for mode in ["auto", "skb"] {
        let output = dns_xdp(
            Some(&pair.server),
            &[
                "attach",
                "--iface",
                LINK,
                "--mode",
                mode,
                "--metrics-addr",
                "off",
            ],
        );
        assert_refused(
            &output,
            1,
            "another XDP program is already attached to dns0",
        );
    }
    assert!(
        pair.server.xdp_attached(LINK),
        "the first attachment survives"
    );
    first
        .next_json(Duration::from_secs(5))
        .expect("the first loader still reports");
    let (status, _) = first.interrupt().unwrap();
    assert!(status.success());
    assert!(!pair.server.xdp_attached(LINK));
}

#[test]
fn bad_arguments_name_the_flag() {
    for (args, needle) in [
        (
            &["attach", "--iface", "lo", "--port", "0"][..],
            "'--port <PORT>'",
        ),
        (
            &["attach", "--iface", "lo", "--port", "70000"][..],
            "'--port <PORT>'",
        ),
        (
            &["attach", "--iface", "lo", "--mode", "fast"][..],
            "'--mode <MODE>'",
        ),
        (
            &["attach", "--iface", "lo", "--stats-interval", "abc"][..],
            "'--stats-interval <SECONDS>'",
        ),
        (
            &["attach", "--iface", "lo", "--stats-interval", "0"][..],
            "between 0.01 and 86400",
        ),
        (
            &["attach", "--iface", "lo", "--dry-run=maybe"][..],
            "--dry-run",
        ),
        // `set` validates its flags as `attach` does, before any instance is opened.
        (
            &["set", "--iface", "lo", "--rate", "fast"][..],
            "'--rate <RATE>'",
        ),
        (
            &["set", "--iface", "lo", "--budget", "0"][..],
            "'--budget <RATE>'",
        ),
        (
            &["set", "--iface", "lo", "--burst", "0"][..],
            "'--burst <N>'",
        ),
        (
            &["set", "--iface", "lo", "--v6-prefix", "129"][..],
            "'--v6-prefix <BITS>'",
        ),
    ] {
        assert_refused(&dns_xdp(None, args), 2, needle);
    }
    // Values clap cannot judge alone: one line, exit 1.
    for (args, needle) in [
        (&["attach"][..], "no interface: pass --iface"),
        (
            &["attach", "--iface", "lo", "--v4-prefix", "33"][..],
            "--v4-prefix 33: an IPv4 prefix has 0 to 32 bits",
        ),
        (
            &["attach", "--iface", "lo", "--burst", "9"][..],
            "--burst needs --rate",
        ),
        (&["attach", "--iface", "lo", "--rate", "0"][..], "rate of 0"),
        (
            &["attach", "--iface", "lo", "--budget-burst", "9"][..],
            "--budget-burst needs --budget",
        ),
        (
            &[
                "attach",
                "--iface",
                "lo",
                "--budget",
                "5000/s",
                "--budget-burst",
                "0",
            ][..],
            "--budget-burst must be at least 1",
        ),
        (
            &["set", "--iface", "lo", "--pin-root", "/nonexistent"][..],
            "no dns-xdp instance on lo",
        ),
        (
            &["stats", "--iface", "lo", "--pin-root", "/nonexistent"][..],
            "no dns-xdp instance on lo",
        ),
        (
            &["allow", "add", "10.0.0.1/8", "--iface", "lo"][..],
            "has host bits set",
        ),
        (
            &["run", "--config", "/nonexistent.toml"][..],
            "reading /nonexistent.toml",
        ),
    ] {
        let output = dns_xdp(None, args);
        let code = if needle.contains("host bits") || needle.contains("rate of 0") {
            2
        } else {
            1
        };
        assert_refused(&output, code, needle);
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused() {
    let path = std::env::temp_dir().join(format!("dns-xdp-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "iface = \"lo\"\nrate-limit = 5\n").unwrap();
    let output = dns_xdp(None, &["run", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_refused(&output, 1, "unknown field `rate-limit`");
}

#[test]
fn a_taken_metrics_address_fails_the_start_before_anything_is_attached() {
    let pair = Pair::new().unwrap();
    // The first instance serves metrics on the namespace's 127.0.0.1:9553.
    let first = Loader::attach(&pair.server, &[]).unwrap();
    let output = dns_xdp(Some(&pair.server), &["attach", "--iface", "lo"]);
    assert_refused(&output, 1, "binding the metrics address 127.0.0.1:9553");
    assert!(!pair.server.xdp_attached("lo"), "nothing attached to lo");
    let tables = pair
        .server
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.contains("dns_xdp_lo"),
        "no bypass rules for lo: {tables}"
    );
    assert!(
        pair.server.xdp_attached(LINK),
        "the first instance is untouched"
    );
    drop(first);
}

#[test]
fn pins_from_a_build_with_another_layout_are_refused() {
    let pair = Pair::new().unwrap();
    let bpffs = dns_xdp_testkit::loader::BpfFs::new().unwrap();
    let dir = bpffs.path().join(LINK);
    std::fs::create_dir_all(&dir).unwrap();
    // A CONFIG map as some other build might have pinned it: the wrong value size.
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join("CONFIG"))
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "2", "name", "CONFIG",
        ])
        .status()
        .expect("running bpftool");
    assert!(created.success());
    let output = dns_xdp(
        Some(&pair.server),
        &[
            "attach",
            "--iface",
            LINK,
            "--metrics-addr",
            "off",
            &bpffs.arg(),
        ],
    );
    assert_refused(
        &output,
        1,
        "come from a dns-xdp build with another layout (CONFIG",
    );
    assert!(!pair.server.xdp_attached(LINK), "nothing attached");
    assert!(
        dir.join("CONFIG").exists(),
        "the foreign pin is left for `detach`"
    );
}

#[test]
fn without_the_bypass_no_nft_is_needed() {
    let pair = Pair::new().unwrap();
    let bpffs = loader::BpfFs::new().unwrap();
    // PATH without /usr/sbin: no nft (nor anything else from there) for the loader.
    let mut command = Command::new("/usr/sbin/ip");
    command
        .args(["netns", "exec", pair.server.name()])
        .arg(loader::binary())
        .args([
            "attach",
            "--iface",
            LINK,
            "--json",
            "--stats-interval",
            "0.1",
        ])
        .args(["--conntrack-bypass=false", &bpffs.arg()])
        .env("PATH", "/usr/bin:/bin");
    let mut running = Loader::spawn(command).unwrap();
    running
        .next_json(Duration::from_secs(10))
        .expect("attached without nft");
    assert!(pair.server.xdp_attached(LINK));
    let (status, _) = running.interrupt().unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(!pair.server.xdp_attached(LINK));
}

#[test]
fn an_iptables_legacy_drop_policy_is_reported_with_its_fix() {
    let pair = Pair::new().unwrap();
    // A legacy (not nft) filter table that drops by default, accepting only tracked
    // traffic: nft's ruleset does not show it, and the bypass's untracked DNS would die
    // there.
    for args in [
        ["-P", "INPUT", "DROP"].as_slice(),
        &[
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    ] {
        let status = pair
            .server
            .command("iptables-legacy")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "iptables-legacy {args:?}");
    }
    let loader = Loader::attach(&pair.server, &[]).expect("attaching");
    std::thread::sleep(Duration::from_millis(300));
    let stderr = loader.stderr_text();
    loader.kill();
    assert!(
        stderr.contains("chain ip filter INPUT drops by default"),
        "{stderr}"
    );
    let fix =
        format!("iptables-legacy -I INPUT -i {LINK} -p udp -m multiport --dports 53 -j ACCEPT");
    assert!(stderr.contains(&fix), "{stderr}");
}

#[test]
fn the_manual_pages_and_completions_come_from_the_same_definitions_as_help() {
    let dir = std::env::temp_dir().join(format!("dns-xdp-man-{}", std::process::id()));
    let output = dns_xdp(None, &["man", "--dir", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let page = std::fs::read_to_string(dir.join("dns-xdp-set.1")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // The flag and its help line, as `dns-xdp set --help` has them.
    assert!(page.contains("budget"), "{page}");
    assert!(page.contains("Server budget"), "{page}");
    let completions = dns_xdp(None, &["completions", "bash"]);
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("--slip-prefix-cap"));
}
