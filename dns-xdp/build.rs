//! Builds the production eBPF programs (dns-xdp-ebpf) into OUT_DIR: see dns-xdp-build.
fn main() -> anyhow::Result<()> {
    dns_xdp_build::build_ebpf("dns-xdp-ebpf", "dns-xdp", "DNS_XDP_EBPF")
}
