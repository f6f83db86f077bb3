//! The lab and the benchmarks: the lab world (namespaces, NSD, dnsperf, firewall
//! configurations, counters) shared by `lab` (the live demo), `e2e` (the end-to-end
//! comparison against kernel baselines) and `flood`; the e2e chart; `microbench` (the
//! per-path BPF_PROG_TEST_RUN micro-benchmark). All need root.

pub mod lab;
