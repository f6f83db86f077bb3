//! The Debian package (`cargo xtask package`): it installs the binary, the unit, the
//! manual pages and the completions, and removing it leaves nothing attached and no file
//! behind. Installed with dpkg into a scratch root and database, so the host's own stays
//! as it was. Needs root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dns_xdp_testkit::{
    loader::BpfFs,
    netns::{LINK, Pair},
    process::ScratchDir,
};

/// Builds the package; its path.
fn build_package() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--package", "xtask", "--", "package"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .rev()
            .find(|line| line.ends_with(".deb"))
            .unwrap(),
    )
}

/// dpkg on the scratch root `root` and database `admin`.
fn dpkg(root: &Path, admin: &Path, pin_root: &Path, args: &[&str]) {
    let output = Command::new("dpkg")
        .arg(format!("--admindir={}", admin.display()))
        .arg(format!("--instdir={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .env("DNS_XDP_PIN_ROOT", pin_root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dpkg {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_package_installs_everything_and_its_removal_leaves_nothing_attached() {
    let deb = build_package();
    let scratch = ScratchDir::new("package").unwrap();
    let (root, admin) = (scratch.path().join("root"), scratch.path().join("admin"));
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let bpffs = BpfFs::new().unwrap();
    dpkg(
        &root,
        &admin,
        bpffs.path(),
        &["--install", deb.to_str().unwrap()],
    );
    let installed = root.join("usr/sbin/dns-xdp");
    for file in [
        "usr/sbin/dns-xdp",
        "lib/systemd/system/dns-xdp@.service",
        "usr/share/man/man1/dns-xdp.1.gz",
        "usr/share/man/man1/dns-xdp-attach.1.gz",
        "usr/share/bash-completion/completions/dns-xdp",
        "usr/share/doc/dns-xdp/dns-xdp.example.toml",
    ] {
        assert!(root.join(file).exists(), "{file} not installed");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/dns-xdp@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/dns-xdp run"), "{unit}");

    // An instance left attached (as a stopped unit leaves it), by the installed binary.
    let pair = Pair::new().unwrap();
    let status = pair
        .server
        .command(installed.to_str().unwrap())
        .args([
            "attach",
            "--iface",
            LINK,
            "--keep-attached",
            "--conntrack-bypass=false",
        ])
        .args(["--metrics-addr", "off", "--stats-interval", "0.1"])
        .arg(bpffs.arg())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = status.id();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let mut child = status;
    child.wait().unwrap();
    assert!(pair.server.xdp_attached(LINK), "left attached");

    dpkg(&root, &admin, bpffs.path(), &["--purge", "dns-xdp"]);
    assert!(
        !pair.server.xdp_attached(LINK),
        "still attached after removal"
    );
    let left: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|path| path.is_file())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            paths.extend(walk(&path));
            paths.push(path);
        }
    }
    paths
}
