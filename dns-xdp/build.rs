//! Builds the eBPF programs (dns-xdp-ebpf) with aya-build and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`.
//!
//! Without the eBPF toolchain (bpf-linker, nightly with rust-src) this writes an empty
//! object instead and warns, so `cargo check`/`clippy` of the userspace crates work
//! anywhere; the loader then refuses to start with a message naming the missing piece.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "dns-xdp-ebpf";
/// The object's file name in OUT_DIR: the eBPF crate's binary name.
const OBJECT: &str = "dns-xdp";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=DNS_XDP_STUB_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let missing = if env::var_os("DNS_XDP_STUB_EBPF").is_some() {
        Some("DNS_XDP_STUB_EBPF is set".to_owned())
    } else {
        missing_toolchain()
    };
    if let Some(missing) = missing {
        println!(
            "cargo:warning=dns-xdp: eBPF programs not built ({missing}); \
             the loader will refuse to run. Run `cargo xtask setup`."
        );
        println!("cargo:rustc-env=DNS_XDP_EBPF_MISSING={missing}");
        // Build for real as soon as the toolchain appears.
        if let Some(home) = env::var_os("CARGO_HOME")
            .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").into()))
        {
            let linker = PathBuf::from(home).join("bin/bpf-linker");
            println!("cargo:rerun-if-changed={}", linker.display());
        }
        fs::write(out_dir.join(OBJECT), []).context("writing stub eBPF object")?;
        return Ok(());
    }
    println!("cargo:rustc-env=DNS_XDP_EBPF_MISSING=");

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// What of the eBPF toolchain is missing, if anything.
fn missing_toolchain() -> Option<String> {
    if !on_path("bpf-linker") {
        return Some("bpf-linker not on PATH".to_owned());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match sysroot {
        Ok(output) if output.status.success() => {
            let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let core = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core");
            (!core.is_dir()).then(|| "nightly rust-src component not installed".to_owned())
        }
        _ => Some("nightly toolchain not installed".to_owned()),
    }
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
