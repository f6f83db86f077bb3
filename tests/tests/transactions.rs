//! Changes to a running instance are transactions: `set`, `allow` and `deny` from
//! several processes at once all take effect, and no reader of the configuration (the
//! programs read it as this test does: the live slot, then that slot) sees a mix of two
//! configurations. Needs root.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use dns_xdp::{maps::Maps, programs::pin_dir, settings::IpNet};
use dns_xdp_common::{Family, NS_PER_SEC};
use dns_xdp_testkit::{
    loader::{self, BpfFs, Loader},
    netns::{LINK, Pair},
};

/// Changes each writer makes.
const CHANGES: u32 = 500;
/// The two per-source limits the first writer alternates between: (interval, burst).
const LIMITS: [(&str, &str, u64, u64); 2] = [
    ("10/s", "20", NS_PER_SEC / 10, 20),
    ("20/s", "40", NS_PER_SEC / 20, 40),
];

/// The deny-list prefix the second writer adds `index`-th.
fn prefix(index: u32) -> IpNet {
    let [_, _, high, low] = index.to_be_bytes();
    IpNet::new(Ipv4Addr::new(198, 18, 100 + high, low).into(), 32).unwrap()
}

#[test]
fn concurrent_changes_all_take_effect_and_no_reader_sees_a_mix() {
    let pair = Pair::new().expect("creating namespaces");
    let bpffs = BpfFs::new().unwrap();
    let loader = Loader::attach_pinned(
        &pair.server,
        &bpffs,
        &[
            "--rate",
            "10/s",
            "--burst",
            "20",
            "--levels",
            "none",
            "--conntrack-bypass=false",
        ],
    )
    .expect("attaching");
    let dir = pin_dir(bpffs.path(), LINK);
    let start = Maps::from_pins(&dir).unwrap().config().unwrap().generation;

    // The reader: every configuration it sees is one a writer wrote whole, and the
    // first writer's changes never go back (no change was lost and then restored).
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dir, done) = (dir.clone(), done.clone());
        thread::spawn(move || {
            let maps = Maps::from_pins(&dir).unwrap();
            let (mut reads, mut last_slip) = (0u64, 0);
            while !done.load(Ordering::Relaxed) {
                let config = maps.config().unwrap();
                let limit = config.levels[0].limit;
                let pair = (limit.interval_ns, limit.burst());
                assert!(
                    LIMITS
                        .iter()
                        .any(|&(_, _, interval, burst)| (interval, burst) == pair),
                    "a mixed limit: interval {} ns, burst {}",
                    pair.0,
                    pair.1
                );
                assert!(
                    config.slip >= last_slip,
                    "slip went back from {last_slip} to {}: a change was lost",
                    config.slip
                );
                last_slip = config.slip;
                reads += 1;
            }
            reads
        })
    };
    let writers: Vec<_> = [0, 1]
        .into_iter()
        .map(|writer| {
            let (server, pin_root) = (pair.server.name().to_owned(), bpffs.arg());
            thread::spawn(move || {
                let run = |args: Vec<String>| {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let output = std::process::Command::new("ip")
                        .args(["netns", "exec", &server])
                        .arg(loader::binary())
                        .args(&args)
                        .arg(&pin_root)
                        .env("RUST_LOG", "warn")
                        // Read, wait, write: without one writer at a time, the two
                        // processes' changes would overlap and one would be lost.
                        .env("DNS_XDP_TEST_CHANGE_DELAY_MS", "3")
                        .output()
                        .unwrap();
                    assert!(
                        output.status.success(),
                        "{args:?}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                };
                let iface = || vec!["--iface".to_owned(), LINK.to_owned()];
                if writer == 0 {
                    for change in 1..=CHANGES {
                        let (rate, burst, ..) = LIMITS[change as usize % 2];
                        let mut args = vec!["set".to_owned()];
                        args.extend(iface());
                        args.extend(
                            [
                                "--slip",
                                &change.to_string(),
                                "--rate",
                                rate,
                                "--burst",
                                burst,
                            ]
                            .map(str::to_owned),
                        );
                        run(args);
                    }
                } else {
                    // 300 adds and 200 removals: every prefix whose index is not a
                    // multiple of 3 is removed right after it was added.
                    for index in 0..CHANGES * 3 / 5 {
                        let add = [
                            vec![
                                "deny".to_owned(),
                                "add".to_owned(),
                                prefix(index).to_string(),
                            ],
                            iface(),
                        ]
                        .concat();
                        run(add);
                        if index % 3 != 0 {
                            let del = [
                                vec![
                                    "deny".to_owned(),
                                    "del".to_owned(),
                                    prefix(index).to_string(),
                                ],
                                iface(),
                            ]
                            .concat();
                            run(del);
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer failed");
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader
        .join()
        .expect("the reader saw a mix or a lost change");

    let maps = Maps::from_pins(&dir).unwrap();
    let config = maps.config().unwrap();
    let (_, _, interval, burst) = LIMITS[CHANGES as usize % 2];
    assert_eq!(config.slip, CHANGES, "the last slip");
    assert_eq!(
        (
            config.levels[0].limit.interval_ns,
            config.levels[0].limit.burst()
        ),
        (interval, burst)
    );
    let denied: BTreeSet<IpNet> = maps
        .lists()
        .unwrap()
        .into_iter()
        .filter(|entry| !entry.allow)
        .map(|entry| entry.prefix)
        .collect();
    let expected: BTreeSet<IpNet> = (0..CHANGES * 3 / 5)
        .filter(|index| index % 3 == 0)
        .map(prefix)
        .collect();
    assert_eq!(denied, expected);
    // The list flags match the lists: IPv4 entries, no IPv6 ones.
    assert!(config.has_list(Family::V4) && !config.has_list(Family::V6));
    // Every write went through: the first writer's 500, and one flag change (the first
    // deny entry turned IPv4 list lookups on).
    assert_eq!(config.generation, start + u64::from(CHANGES) + 1);
    println!(
        "{} changes from two processes: all in the live configuration (generation {} -> {}); \
         {reads} concurrent reads, none mixed",
        CHANGES * 2,
        start,
        config.generation
    );
    let _ = loader::run_command(&pair.server, &bpffs, &["status", "--iface", LINK]);

    // The locks are root's: another user can neither take one (and block changes,
    // restarts or `detach`) nor make a file beside them.
    use std::os::unix::fs::PermissionsExt as _;
    let lock_dir = std::path::Path::new("/run/dns-xdp");
    let config_lock = lock_dir.join(format!(
        "{}.config.lock",
        dns_xdp::pins::escaped(&dir.to_string_lossy())
    ));
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(lock_dir), 0o700);
    assert_eq!(mode(&config_lock), 0o600);
    let as_nobody = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-n",
        ])
        .arg(&config_lock)
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !as_nobody.status.success(),
        "nobody took {}",
        config_lock.display()
    );
    loader.interrupt().expect("detaching");
    // The instance is gone: so are its files beside the locks.
    assert!(!config_lock.exists(), "{} left", config_lock.display());
}
