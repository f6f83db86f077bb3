//! Types shared by the dns-xdp kernel programs and the loader.
//!
//! Every map key and value is `#[repr(C)]` and derives bytemuck's `Pod`, whose derive
//! refuses to compile a type with padding: both sides see exactly the same bytes.
//! The functions here are plain Rust so that host unit tests can reach them.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Ports that carry DNS, as a 65 536-bit set: one config lookup answers "is this a DNS
/// port?" for any port with one load, whatever the number of configured ports.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PortSet {
    words: [u64; 1024],
}

impl PortSet {
    pub const EMPTY: Self = Self { words: [0; 1024] };

    pub fn insert(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    /// The ports in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&port| self.contains(port))
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// The well-known DNS port, the default of the port set.
pub const DNS_PORT: u16 = 53;

/// Runtime configuration, the single entry of the `CONFIG` array map. The loader writes
/// it before attaching; the programs read it once per packet.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub struct Config {
    /// Destination port in the set: a query to us; source port in the set: an answer.
    pub dns_ports: PortSet,
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// Index of a per-CPU counter. Add a counter here and both sides follow: the
        /// kernel indexes `Counters` by it, the loader names it with `name()`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];

            /// Stable snake_case name, used in JSON output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }
        }
    };
}

counters! {
    /// Every frame the program saw.
    Packets => "packets",
    /// UDP over IPv4 to a DNS port (a query to us).
    QueryUdp4 => "query_udp4",
    /// UDP over IPv6 to a DNS port.
    QueryUdp6 => "query_udp6",
    /// TCP over IPv4 to a DNS port.
    QueryTcp4 => "query_tcp4",
    /// TCP over IPv6 to a DNS port.
    QueryTcp6 => "query_tcp6",
    /// UDP over IPv4 from a DNS port (an answer from an upstream server).
    AnswerUdp4 => "answer_udp4",
    /// UDP over IPv6 from a DNS port.
    AnswerUdp6 => "answer_udp6",
    /// TCP over IPv4 from a DNS port.
    AnswerTcp4 => "answer_tcp4",
    /// TCP over IPv6 from a DNS port.
    AnswerTcp6 => "answer_tcp6",
    /// Well-formed but not DNS: another EtherType, IP protocol or port, or more VLAN
    /// tags than the parser reads.
    NonDns => "non_dns",
    /// Truncated or inconsistent headers at any layer.
    Malformed => "malformed",
    /// A non-first IP fragment: no L4 header to classify.
    Fragment => "fragment",
}

/// Number of counters.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

/// All counters of one CPU, the single entry of the `COUNTERS` per-CPU array: one map
/// lookup per packet, whatever the number of counters bumped.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT],
}

impl Counters {
    #[inline(always)]
    pub fn bump(&mut self, counter: Counter) {
        self.values[counter as usize] += 1;
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Element-wise sum, to fold the per-CPU copies into one.
    pub fn add(&mut self, other: &Counters) {
        for (sum, value) in self.values.iter_mut().zip(other.values) {
            *sum = sum.wrapping_add(value);
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Transport protocol of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp,
    Tcp,
}

/// What a frame is, as far as dns-xdp cares. Each frame gets exactly one class, and each
/// class maps to exactly one counter besides `Packets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// To a DNS port.
    Query {
        l4: L4,
        ipv6: bool,
    },
    /// From a DNS port (and not to one).
    Answer {
        l4: L4,
        ipv6: bool,
    },
    NonDns,
    Malformed,
    Fragment,
}

impl Class {
    /// Classifies a UDP/TCP packet by its ports: the destination port wins, so a packet
    /// between two DNS ports is a query.
    #[inline(always)]
    pub fn of_ports(ports: &PortSet, l4: L4, ipv6: bool, src_port: u16, dst_port: u16) -> Self {
        if ports.contains(dst_port) {
            Class::Query { l4, ipv6 }
        } else if ports.contains(src_port) {
            Class::Answer { l4, ipv6 }
        } else {
            Class::NonDns
        }
    }

    /// The counter this class bumps.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            Class::Query {
                l4: L4::Udp,
                ipv6: false,
            } => Counter::QueryUdp4,
            Class::Query {
                l4: L4::Udp,
                ipv6: true,
            } => Counter::QueryUdp6,
            Class::Query {
                l4: L4::Tcp,
                ipv6: false,
            } => Counter::QueryTcp4,
            Class::Query {
                l4: L4::Tcp,
                ipv6: true,
            } => Counter::QueryTcp6,
            Class::Answer {
                l4: L4::Udp,
                ipv6: false,
            } => Counter::AnswerUdp4,
            Class::Answer {
                l4: L4::Udp,
                ipv6: true,
            } => Counter::AnswerUdp6,
            Class::Answer {
                l4: L4::Tcp,
                ipv6: false,
            } => Counter::AnswerTcp4,
            Class::Answer {
                l4: L4::Tcp,
                ipv6: true,
            } => Counter::AnswerTcp6,
            Class::NonDns => Counter::NonDns,
            Class::Malformed => Counter::Malformed,
            Class::Fragment => Counter::Fragment,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `bytemuck::Pod`: plain old data without padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counters {}
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_set_holds_exactly_what_was_inserted() {
        let mut ports = PortSet::EMPTY;
        for port in [0, 53, 63, 64, 853, u16::MAX] {
            ports.insert(port);
        }
        assert!(ports.contains(53) && ports.contains(0) && ports.contains(u16::MAX));
        assert!(!ports.contains(52) && !ports.contains(54) && !ports.contains(65));
        assert_eq!(
            ports.iter().collect::<std::vec::Vec<_>>(),
            [0, 53, 63, 64, 853, u16::MAX]
        );
    }

    #[test]
    fn destination_port_wins_over_source_port() {
        let mut ports = PortSet::EMPTY;
        ports.insert(53);
        let class = |sport, dport| Class::of_ports(&ports, L4::Udp, false, sport, dport);
        assert_eq!(
            class(40000, 53),
            Class::Query {
                l4: L4::Udp,
                ipv6: false
            }
        );
        assert_eq!(
            class(53, 53),
            Class::Query {
                l4: L4::Udp,
                ipv6: false
            }
        );
        assert_eq!(
            class(53, 40000),
            Class::Answer {
                l4: L4::Udp,
                ipv6: false
            }
        );
        assert_eq!(class(40000, 40001), Class::NonDns);
    }

    #[test]
    fn every_counter_has_a_distinct_name_and_its_index() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
            assert_eq!(
                Counter::ALL
                    .iter()
                    .filter(|c| c.name() == counter.name())
                    .count(),
                1
            );
        }
    }

    #[test]
    fn classes_map_to_distinct_counters_other_than_packets() {
        let mut seen = std::vec::Vec::new();
        for l4 in [L4::Udp, L4::Tcp] {
            for ipv6 in [false, true] {
                seen.push(Class::Query { l4, ipv6 }.counter());
                seen.push(Class::Answer { l4, ipv6 }.counter());
            }
        }
        seen.extend([Class::NonDns, Class::Malformed, Class::Fragment].map(Class::counter));
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len());
        assert!(!seen.contains(&Counter::Packets));
        assert_eq!(seen.len() + 1, COUNTER_COUNT);
    }
}
