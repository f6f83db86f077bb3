//! Shared helpers of the dns-xdp integration tests: crafted frames, an etherparse-based
//! reference classifier, BPF_PROG_TEST_RUN, and network namespaces joined by veth.

pub mod dns;
pub mod flood;
pub mod lab;
pub mod loader;
pub mod netns;
pub mod packet;
pub mod reference;
pub mod servers;
pub mod testrun;
