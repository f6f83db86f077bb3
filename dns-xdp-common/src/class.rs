//! What a parsed frame is: its class, from its transport and ports.

use crate::{Counter, Family, PortSet};

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
        family: Family,
    },
    /// From a DNS port (and not to one).
    Answer {
        l4: L4,
        family: Family,
    },
    NonDns,
    Malformed,
    Fragment,
}

impl Class {
    /// Classifies a UDP/TCP packet by its ports: the destination port wins, so a packet
    /// between two DNS ports is a query.
    #[inline(always)]
    pub fn of_ports(ports: &PortSet, l4: L4, family: Family, src_port: u16, dst_port: u16) -> Self {
        if ports.contains(dst_port) {
            Class::Query { l4, family }
        } else if ports.contains(src_port) {
            Class::Answer { l4, family }
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
                family: Family::V4,
            } => Counter::QueryUdp4,
            Class::Query {
                l4: L4::Udp,
                family: Family::V6,
            } => Counter::QueryUdp6,
            Class::Query {
                l4: L4::Tcp,
                family: Family::V4,
            } => Counter::QueryTcp4,
            Class::Query {
                l4: L4::Tcp,
                family: Family::V6,
            } => Counter::QueryTcp6,
            Class::Answer {
                l4: L4::Udp,
                family: Family::V4,
            } => Counter::AnswerUdp4,
            Class::Answer {
                l4: L4::Udp,
                family: Family::V6,
            } => Counter::AnswerUdp6,
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V4,
            } => Counter::AnswerTcp4,
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V6,
            } => Counter::AnswerTcp6,
            Class::NonDns => Counter::NonDns,
            Class::Malformed => Counter::Malformed,
            Class::Fragment => Counter::Fragment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

    #[test]
    fn destination_port_wins_over_source_port() {
        let mut ports = PortSet::EMPTY;
        ports.insert(53);
        let class = |sport, dport| Class::of_ports(&ports, L4::Udp, Family::V4, sport, dport);
        assert_eq!(
            class(40000, 53),
            Class::Query {
                l4: L4::Udp,
                family: Family::V4
            }
        );
        assert_eq!(
            class(53, 53),
            Class::Query {
                l4: L4::Udp,
                family: Family::V4
            }
        );
        assert_eq!(
            class(53, 40000),
            Class::Answer {
                l4: L4::Udp,
                family: Family::V4
            }
        );
        assert_eq!(class(40000, 40001), Class::NonDns);
    }

    #[test]
    fn classes_map_to_distinct_counters_other_than_packets() {
        let mut seen = std::vec::Vec::new();
        for l4 in [L4::Udp, L4::Tcp] {
            for family in [Family::V4, Family::V6] {
                seen.push(Class::Query { l4, family }.counter());
                seen.push(Class::Answer { l4, family }.counter());
            }
        }
        seen.extend([Class::NonDns, Class::Malformed, Class::Fragment].map(Class::counter));
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len());
        assert!(!seen.contains(&Counter::Packets));
        let classes: std::vec::Vec<_> = Counter::ALL
            .iter()
            .copied()
            .filter(|c| c.is_class())
            .collect();
        let mut sorted_seen = seen.clone();
        sorted_seen.sort();
        assert_eq!(classes, sorted_seen);
        assert!(seen.iter().all(|&counter| counter < Counter::Allowed));
    }
}
