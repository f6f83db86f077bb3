//! Builds the test and benchmark programs (dns-xdp-test-ebpf) into OUT_DIR: see
//! dns-xdp-build.
fn main() -> anyhow::Result<()> {
    dns_xdp_build::build_ebpf("dns-xdp-test-ebpf", "dns-xdp-test", "DNS_XDP_TEST_EBPF")
}
