//! The dns-xdp test kit, shared by the integration tests (`tests/`) and the lab and
//! benchmarks (`lab/`): crafted frames, an etherparse-based reference classifier,
//! BPF_PROG_TEST_RUN (with the test programs' object, built from dns-xdp-test-ebpf),
//! network namespaces joined by veth, the loader driven as a process, DNS clients (dig
//! among them) and servers, raw TCP segments, and the flood generator.

pub mod dig;
pub mod dns;
pub mod flood;
pub mod loader;
pub mod netns;
pub mod packet;
pub mod process;
pub mod raw_tcp;
pub mod reference;
pub mod servers;
pub mod test_programs;
pub mod testrun;
