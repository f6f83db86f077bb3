//! Build-script support shared by the crates that embed eBPF objects (the loader's
//! production programs, the test kit's test programs): builds an eBPF crate with
//! aya-build and leaves its object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Without the eBPF toolchain (bpf-linker, nightly with rust-src) it writes an empty
//! object instead and warns, so `cargo check`/`clippy` of the userspace crates work
//! anywhere; the embedding crate then refuses to load it, naming the missing piece
//! (from the `<PREFIX>_MISSING` environment variable set at compile time).
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

/// Builds the eBPF crate `package` (its binary is named `object`) into OUT_DIR, and sets
/// `<env_prefix>_MISSING` to what of the toolchain is missing (empty when built).
pub fn build_ebpf(package: &str, object: &str, env_prefix: &str) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=DNS_XDP_STUB_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let missing = if env::var_os("DNS_XDP_STUB_EBPF").is_some() {
        Some("DNS_XDP_STUB_EBPF is set".to_owned())
    } else {
        missing_toolchain()
    };
    if let Some(missing) = missing {
        println!(
            "cargo:warning={package}: eBPF programs not built ({missing}); \
             they will not load. Run `cargo xtask setup`."
        );
        println!("cargo:rustc-env={env_prefix}_MISSING={missing}");
        // Build for real as soon as the toolchain appears.
        if let Some(home) = env::var_os("CARGO_HOME")
            .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").into()))
        {
            let linker = PathBuf::from(home).join("bin/bpf-linker");
            println!("cargo:rerun-if-changed={}", linker.display());
        }
        fs::write(out_dir.join(object), []).context("writing stub eBPF object")?;
        return Ok(());
    }
    println!("cargo:rustc-env={env_prefix}_MISSING=");

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let found = metadata
        .packages
        .iter()
        .find(|candidate| candidate.name.as_str() == package)
        .ok_or_else(|| anyhow!("{package} package not found"))?;
    let root_dir = found
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", found.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
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

/// For the eBPF crates' own build scripts: rebuild when bpf-linker changes (an undeclared
/// dependency of theirs).
pub fn rerun_if_linker_changes() {
    if let Some(path) = env::var_os("PATH")
        && let Some(linker) = env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|linker| linker.is_file())
    {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
