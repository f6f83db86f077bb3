//! `cargo xtask`: bootstrap the toolchain, build, and test dns-xdp.

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for dns-xdp")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent, quick when all is present).
    Setup,
    /// Set up, then build the loader with its eBPF programs (release).
    Build,
    /// Set up, check formatting and lints, build, and run every test (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the benchmarks: the micro-benchmark, then the end-to-end comparison
    /// against iptables (about 13 minutes); results go to target/bench/ (needs root).
    Bench {
        /// Skip the end-to-end comparison (micro-benchmark only).
        #[arg(long)]
        micro_only: bool,
    },
    /// Set up, build, and show dns-xdp at work in network namespaces: a DNS server, normal
    /// clients and floods, with a live view (needs root; `-- --help` for its options,
    /// e.g. `cargo xtask lab --duration 60`).
    Lab {
        /// Options for the lab (`--duration S`, `--legit-rate QPS`, `--flood-rate PPS`,
        /// `--rate R`, `--burst N`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and make the Debian package: target/package/dns-xdp_<version>_<arch>.deb
    /// (the binary, the systemd unit, the example configuration, the manual pages and
    /// the completions). Prints the package's path last.
    Package,
}

/// The bpf-linker release that builds against nightly's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";
/// Commands the loader and the tests run, and the Debian package of each.
const TEST_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("bpftool", "bpftool"),
    // The doctor's legacy-table check is tested against a real iptables-legacy.
    ("iptables-legacy", "iptables"),
];
/// The userspace packages, which `test` builds, lints and tests by name.
const USERSPACE_PACKAGES: &[&str] = &[
    "dns-xdp",
    "dns-xdp-common",
    "dns-xdp-build",
    "dns-xdp-testkit",
    "dns-xdp-tests",
    "dns-xdp-lab",
    "xtask",
];
/// The eBPF packages (bpfel-unknown-none only), linted with nightly.
const EBPF_PACKAGES: &[&str] = &["dns-xdp-ebpf", "dns-xdp-test-ebpf"];

/// DNS servers the tests run as real peers, in namespaces (their packages would start
/// the service on the host: installed with service starts refused), and `dig`, the
/// client that shows a server's DNS cookies.
const TEST_SERVERS: &[(&str, &str)] = &[
    ("nsd", "nsd"),
    ("unbound", "unbound"),
    ("named", "bind9"),
    ("dig", "bind9-dnsutils"),
];

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    match Cli::parse().task {
        Task::Setup => setup()?,
        Task::Build => {
            setup()?;
            cargo(&["build", "--release", "--package", "dns-xdp"])?;
        }
        Task::Test { args } => {
            setup()?;
            test(&args)?;
        }
        Task::Lab { args } => {
            setup()?;
            setup_lab()?;
            build_with_loader("lab")?;
            run_ignoring_interrupts(
                Command::new(workspace_root().join("target/release/lab")).args(&args),
            )?;
        }
        Task::Package => {
            setup()?;
            let deb = package()?;
            println!("{}", deb.display());
        }
        Task::Bench { micro_only } => {
            setup()?;
            if !micro_only {
                setup_lab()?;
            }
            let out = workspace_root().join("target/bench");
            cargo(&[
                "run",
                "--release",
                "--package",
                "dns-xdp-lab",
                "--bin",
                "microbench",
                "--",
                out.to_str().context("non-UTF-8 path")?,
            ])?;
            if !micro_only {
                build_with_loader("e2e")?;
                step("end-to-end comparison (about 13 minutes)");
                run_ignoring_interrupts(
                    Command::new(workspace_root().join("target/release/e2e")).arg(&out),
                )?;
            }
        }
    }
    step(&format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Builds the release loader and `bin` of the lab crate (the lab and the benchmark run
/// the loader binary as an operator would).
fn build_with_loader(bin: &str) -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "dns-xdp",
        "--package",
        "dns-xdp-lab",
        "--bin",
        "dns-xdp",
        "--bin",
        bin,
    ])
}

/// Builds the release loader and lays out the Debian package from it and `packaging/`.
fn package() -> anyhow::Result<PathBuf> {
    cargo(&["build", "--release", "--package", "dns-xdp"])?;
    let root = workspace_root();
    let packaging = root.join("packaging");
    let out = root.join("target/package");
    let stage = out.join("root");
    let _ = std::fs::remove_dir_all(&stage);
    let binary = root.join("target/release/dns-xdp");
    let version = env!("CARGO_PKG_VERSION");
    let arch = output("dpkg", &["--print-architecture"]).context("dpkg --print-architecture")?;
    let place = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let write = |to: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let scratch = out.join("scratch");
        std::fs::create_dir_all(&out)?;
        std::fs::write(&scratch, text)?;
        place(&scratch, to, mode)?;
        Ok(std::fs::remove_file(scratch)?)
    };
    place(&binary, "usr/sbin/dns-xdp", 0o755)?;
    let unit = std::fs::read_to_string(packaging.join("dns-xdp@.service"))?
        .replace("/usr/local/bin/dns-xdp", "/usr/sbin/dns-xdp")
        .replace("/usr/local/share/doc/dns-xdp", "/usr/share/doc/dns-xdp");
    write("lib/systemd/system/dns-xdp@.service", &unit, 0o644)?;
    for doc in [
        "README.md",
        "docs/operating.md",
        "packaging/dns-xdp.example.toml",
    ] {
        let name = Path::new(doc)
            .file_name()
            .expect("a file")
            .to_string_lossy();
        place(
            &root.join(doc),
            &format!("usr/share/doc/dns-xdp/{name}"),
            0o644,
        )?;
    }
    write(
        "usr/share/doc/dns-xdp/copyright",
        "dns-xdp\nLicense: MIT OR Apache-2.0 (userspace); Dual MIT/GPL (kernel programs)\n",
        0o644,
    )?;
    std::fs::create_dir_all(stage.join("etc/dns-xdp"))?;
    // The manual pages and completions, from the binary itself.
    let man = stage.join("usr/share/man/man1");
    run(Command::new(&binary).args(["man", "--dir"]).arg(&man))?;
    run(Command::new("gzip").args(["-9", "-n", "-f"]).args(
        std::fs::read_dir(&man)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<Vec<_>, _>>()?,
    ))?;
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/dns-xdp"),
        ("zsh", "usr/share/zsh/vendor-completions/_dns-xdp"),
        ("fish", "usr/share/fish/vendor_completions.d/dns-xdp.fish"),
    ] {
        let script = Command::new(&binary)
            .args(["completions", shell])
            .output()?;
        anyhow::ensure!(script.status.success(), "dns-xdp completions {shell}");
        write(to, &String::from_utf8(script.stdout)?, 0o644)?;
    }
    let control = std::fs::read_to_string(packaging.join("debian/control"))?
        .replace("@VERSION@", version)
        .replace("@ARCH@", &arch);
    write("DEBIAN/control", &control, 0o644)?;
    for script in ["prerm", "postinst", "postrm"] {
        place(
            &packaging.join("debian").join(script),
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    let deb = out.join(format!("dns-xdp_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn step(message: &str) {
    println!("xtask: {message}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(workspace_root()),
    )
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    output("id", &["-u"]).as_deref() == Some("0")
}

fn setup() -> anyhow::Result<()> {
    let llvm_prefix = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    let linker_ok = bpf_linker_ok();

    let mut packages: Vec<&str> = TEST_COMMANDS
        .iter()
        .filter(|(command, _)| !on_path(command) && !Path::new("/usr/sbin").join(command).exists())
        .map(|&(_, package)| package)
        .collect();
    let llvm_dev = format!("llvm-{LLVM_MAJOR}-dev");
    // llvm-config ships without -dev; the linkable libLLVM.so comes with llvm-22-dev.
    let llvm_dev_present = || llvm_prefix.join("lib/libLLVM.so").exists();
    if !linker_ok && !llvm_dev_present() {
        packages.push(&llvm_dev);
    }
    let mut apt_ok = true;
    if packages.is_empty() {
        step("Debian packages: present");
    } else {
        step(&format!(
            "Debian packages: installing {}",
            packages.join(" ")
        ));
        apt_ok = apt_install(&packages).is_ok();
        if !apt_ok {
            let missing: Vec<_> = packages.iter().filter(|p| **p != llvm_dev).collect();
            if !missing.is_empty() {
                bail!(
                    "could not install {missing:?} with apt-get; install them and run `cargo xtask setup` again"
                );
            }
            step("llvm-22-dev unavailable: falling back to nightly's own libLLVM");
        }
    }

    install_servers(TEST_SERVERS)?;

    let Some(nightly) = output("rustup", &["run", "nightly", "rustc", "--version"]) else {
        bail!(
            "the nightly Rust toolchain is missing (the eBPF crate needs it): \
             `rustup toolchain install nightly --component rust-src`"
        );
    };
    step(&format!("nightly: {nightly}"));

    let sysroot = output("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])
        .context("asking nightly for its sysroot")?;
    let sysroot = PathBuf::from(sysroot);
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step("rust-src (nightly): present");
    } else {
        step("rust-src (nightly): installing");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("installing the nightly rust-src component")?;
    }

    if linker_ok {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
    } else {
        let prefix = if apt_ok && llvm_dev_present() {
            llvm_prefix.clone()
        } else {
            nightly_llvm_prefix(&sysroot)?
        };
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: building against LLVM {LLVM_MAJOR} in {} (about a minute)",
            prefix.display()
        ));
        run(Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            .arg("--force"))
        .context("building bpf-linker")?;
        if !bpf_linker_ok() {
            bail!(
                "bpf-linker {BPF_LINKER_VERSION} was installed but is not on PATH; add ~/.cargo/bin to PATH"
            );
        }
    }
    step(&format!("toolchain: {}", toolchain_report()));
    Ok(())
}

/// What decides the eBPF bytecode, and so what the verifier gets: the nightly compiler
/// and its LLVM, bpf-linker and the libLLVM it links, and the kernel that verifies it.
/// One line, for `setup`'s output and the tests' (a failure report carries it).
fn toolchain_report() -> String {
    let unknown = || "unknown".to_owned();
    let verbose = output(
        "rustup",
        &["run", "nightly", "rustc", "--version", "--verbose"],
    )
    .unwrap_or_default();
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .map(str::to_owned)
    };
    let nightly = verbose.lines().next().map_or_else(unknown, str::to_owned);
    let nightly_llvm = field("LLVM version:").unwrap_or_else(unknown);
    let linker = output("bpf-linker", &["--version"]).unwrap_or_else(unknown);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| unknown(), |release| release.trim().to_owned());
    format!(
        "{nightly} with LLVM {nightly_llvm}; {linker} linking {}; kernel {kernel}",
        linked_llvm().unwrap_or_else(unknown)
    )
}

/// The libLLVM bpf-linker loads, with its version where it tells: Debian's (its
/// llvm-config) or the one inside the nightly toolchain.
fn linked_llvm() -> Option<String> {
    let linker = env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|path| path.is_file())?;
    let ldd = output("ldd", &[linker.to_str()?])?;
    let path = ldd
        .lines()
        .filter(|line| line.contains("libLLVM"))
        .find_map(|line| line.split("=>").nth(1))?
        .split_whitespace()
        .next()?
        .to_owned();
    let path = PathBuf::from(path);
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    // Debian's /usr/lib/llvm-22/lib/libLLVM.so.22.1 (a link) sits beside its llvm-config.
    let llvm_config = path.parent()?.parent()?.join("bin/llvm-config");
    let version = if llvm_config.is_file() {
        output(llvm_config.to_str()?, &["--version"]).map(|version| format!("LLVM {version}"))
    } else if real
        .components()
        .any(|part| part.as_os_str() == "toolchains")
    {
        Some("nightly's own LLVM".to_owned())
    } else {
        None
    };
    Some(match version {
        Some(version) => format!("{version} ({})", path.display()),
        None => path.display().to_string(),
    })
}

/// Commands the lab and the end-to-end benchmark run, and the Debian package of each.
const LAB_COMMANDS: &[(&str, &str)] = &[
    ("nsd", "nsd"),
    ("dnsperf", "dnsperf"),
    ("dig", "bind9-dnsutils"),
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
    ("mount", "mount"),
];

/// Installs what the lab and the end-to-end benchmark need. NSD's package would start
/// the service in the initial namespace (listening on the real interfaces): a
/// policy-rc.d that refuses service starts is in place during the install.
fn setup_lab() -> anyhow::Result<()> {
    install_servers(LAB_COMMANDS)
}

/// Installs the packages of `commands` that are missing, with service starts refused
/// (a policy-rc.d that exits 101 while apt runs): NSD's, Unbound's or BIND's package
/// would otherwise start the server in the initial namespace, on the real interfaces.
fn install_servers(commands: &[(&str, &str)]) -> anyhow::Result<()> {
    let names: Vec<&str> = commands.iter().map(|&(command, _)| command).collect();
    let packages: Vec<&str> = commands
        .iter()
        .filter(|(command, _)| !on_path(command) && !Path::new("/usr/sbin").join(command).exists())
        .map(|&(_, package)| package)
        .collect();
    if packages.is_empty() {
        step(&format!("packages for {}: present", names.join(", ")));
        return Ok(());
    }
    step(&format!("packages: installing {}", packages.join(" ")));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask: no service starts during install\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = apt_install(&packages);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed.with_context(|| {
        format!("could not install {packages:?} with apt-get; install them and run again")
    })
}

/// Runs `command` (which handles Ctrl-C itself and tears down) while this process
/// ignores SIGINT, so that the terminal's Ctrl-C does not end xtask before it.
fn run_ignoring_interrupts(command: &mut Command) -> anyhow::Result<()> {
    // SAFETY: setting a signal disposition; the child restores its own handlers.
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let result = run(command);
    // SAFETY: restoring the disposition saved above.
    unsafe { libc::signal(libc::SIGINT, previous) };
    result
}

fn bpf_linker_ok() -> bool {
    output("bpf-linker", &["--version"]).is_some_and(|version| version.contains(BPF_LINKER_VERSION))
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !is_root() || !on_path("apt-get") {
        bail!("installing packages needs root and apt-get");
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
}

/// A directory that looks like an LLVM install to bpf-linker's build, made of the
/// libLLVM that ships inside the nightly toolchain.
fn nightly_llvm_prefix(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let shared = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("libLLVM.so.{LLVM_MAJOR}")))
        .with_context(|| format!("no libLLVM.so.{LLVM_MAJOR}* in {}", lib.display()))?;
    let prefix = workspace_root().join("target/nightly-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so", shared.as_str()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&shared), &path)?;
    }
    Ok(prefix)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load eBPF programs and create network namespaces: run them as root");
    }
    cargo(&["fmt", "--all", "--check"])?;
    let mut clippy = vec!["clippy"];
    for package in USERSPACE_PACKAGES {
        clippy.extend(["--package", package]);
    }
    clippy.extend(["--all-targets", "--", "-D", "warnings"]);
    cargo(&clippy)?;
    // The kernel crates only build for BPF: they get their own clippy run, with nightly.
    for package in EBPF_PACKAGES {
        step(&format!(
            "clippy on {package} (bpfel-unknown-none, nightly)"
        ));
        run(Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                package,
                "--bins",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO")
            .current_dir(workspace_root()))?;
    }
    cargo(&["build", "--package", "dns-xdp"])?;
    let toolchain = toolchain_report();
    // The verifier's budget first, its output shown (the harness hides a passing test's):
    // each program's verified instructions, the kernel release and the toolchain.
    step("the verifier's budget: every program's verified instructions");
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--package", "dns-xdp-tests", "--test", "verifier"])
            .args(["--", "every_program_verifies", "--nocapture"])
            .env("DNS_XDP_TOOLCHAIN", &toolchain)
            .current_dir(workspace_root()),
    )?;
    // Every userspace package by name (the eBPF crates only build for BPF). No doc
    // tests: none are written, and their empty results would end the log.
    let mut args = vec!["test"];
    for package in USERSPACE_PACKAGES {
        args.extend(["--package", package]);
    }
    args.extend(["--lib", "--bins", "--tests"]);
    args.extend(extra.iter().map(String::as_str));
    step(&format!("cargo {}", args.join(" ")));
    let mut child = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .env("DNS_XDP_TOOLCHAIN", &toolchain)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            for part in result.split(['.', ';']) {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u64>() else {
                    continue;
                };
                match what {
                    "passed" => passed += count,
                    "failed" => failed += count,
                    "ignored" => ignored += count,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    step(&format!("toolchain: {toolchain}"));
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
