//! Rebuild when the linker changes: see dns-xdp-build.
fn main() {
    dns_xdp_build::rerun_if_linker_changes();
}
