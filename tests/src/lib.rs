//! Shared helpers of the dns-xdp integration tests: crafted frames, an etherparse-based
//! reference classifier, BPF_PROG_TEST_RUN, network namespaces joined by veth, and
//! raw TCP segments.

pub mod dns;
pub mod flood;
pub mod lab;
pub mod loader;
pub mod netns;
pub mod packet;
pub mod raw_tcp;
pub mod reference;
pub mod servers;
pub mod testrun;
