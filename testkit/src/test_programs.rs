//! The test and benchmark programs (dns-xdp-test-ebpf), embedded in the test kit: never
//! in the production object, so a production start verifies none of them.

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::Xdp};

/// The object built by build.rs.
static TEST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns-xdp-test"));

/// The XDP program that only returns `XDP_PASS`: the cost of running any XDP program, the
/// micro-benchmark's baseline.
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";
/// The flood generators (live-frames BPF_PROG_TEST_RUN).
pub const FLOOD_PROGRAMS: [&str; 3] = ["flood_spoofed", "flood_few", "flood_random"];

/// The embedded object, or an error naming what was missing when it was built.
pub fn test_object() -> anyhow::Result<&'static [u8]> {
    if TEST_OBJECT.is_empty() {
        bail!(
            "the test kit was built without its eBPF programs ({}); run `cargo xtask setup`",
            env!("DNS_XDP_TEST_EBPF_MISSING")
        );
    }
    Ok(TEST_OBJECT)
}

/// The test object with the XDP program `name` loaded into the kernel.
pub fn load(name: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(test_object()?).context("loading the test programs' object")?;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the test object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel refused test program {name}"))?;
    Ok(ebpf)
}
