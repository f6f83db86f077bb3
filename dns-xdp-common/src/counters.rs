//! The per-CPU counters, ingress and egress: adding one is one line in a `counters!` list.

use bytemuck::{Pod, Zeroable};

use crate::{Class, Family, L4, MAX_LEVELS};

/// Declares a counter index enum (with `ALL` and `name()`) and the `#[repr(C)]` array of
/// one CPU's counters indexed by it, so adding a counter is one line.
macro_rules! counters {
    (
        $(#[doc = $enum_doc:literal])* enum $enum:ident;
        $(#[doc = $struct_doc:literal])* struct $values:ident;
        $($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+
    ) => {
        $(#[doc = $enum_doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $enum {
            $($(#[doc = $doc])* $variant,)+
        }

        impl $enum {
            /// Every counter, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)+];

            /// Stable snake_case name, used in JSON output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)+
                }
            }
        }

        $(#[doc = $struct_doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq, Eq)]
        pub struct $values {
            pub values: [u64; $enum::ALL.len()],
        }

        impl $values {
            #[inline(always)]
            pub fn add_to(&mut self, counter: $enum, amount: u64) {
                self.values[counter as usize] += amount;
            }

            #[inline(always)]
            pub fn bump(&mut self, counter: $enum) {
                self.add_to(counter, 1);
            }

            pub fn get(&self, counter: $enum) -> u64 {
                self.values[counter as usize]
            }

            /// Element-wise sum, to fold the per-CPU copies into one.
            pub fn add(&mut self, other: &$values) {
                for (sum, value) in self.values.iter_mut().zip(other.values) {
                    *sum = sum.wrapping_add(value);
                }
            }
        }

        impl Default for $values {
            fn default() -> Self {
                Self::zeroed()
            }
        }
    };
}

counters! {
    /// Index of a per-CPU ingress (XDP) counter: the kernel indexes `Counters` by it,
    /// the loader names it with `name()`.
    enum Counter;
    /// All ingress counters of one CPU, the single entry of the `COUNTERS` per-CPU
    /// array: one map lookup per packet, whatever the number of counters bumped.
    struct Counters;
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
    /// Well-formed but not DNS: another EtherType, IP protocol or port.
    NonDns => "non_dns",
    /// Truncated or inconsistent headers at any layer, or more of them than the parser
    /// reads (VLAN tags, IPv6 extension headers): dropped.
    Malformed => "malformed",
    /// A non-first IP fragment: no L4 header to classify.
    Fragment => "fragment",
    /// Queries from an allow-listed prefix: passed without a limit.
    Allowed => "allowed",
    /// Queries from a deny-listed prefix: dropped (passed in dry-run).
    Denied => "denied",
    /// Queries admitted by their source's bucket.
    RatePassed => "rate_passed",
    /// Queries refused by a bucket at some level: dropped (passed in dry-run).
    RateLimited => "rate_limited",
    /// Of those, refused at level 0 (the source's own prefix).
    RateLimitedLevel0 => "rate_limited_level0",
    /// Refused at level 1 (the first aggregate prefix).
    RateLimitedLevel1 => "rate_limited_level1",
    RateLimitedLevel2 => "rate_limited_level2",
    RateLimitedLevel3 => "rate_limited_level3",
    /// Denied or rate-limited queries passed because of dry-run.
    DryRunWouldDrop => "dry_run_would_drop",
    /// Sources (prefix keys) put into the table.
    SourcesCreated => "sources_created",
    /// Queries passed unlimited because no bucket could be stored for their source.
    TableFull => "table_full",
    /// Queries refused after their bucket (or the server budget) changed under them too
    /// many times in a row: other CPUs kept admitting.
    RateContended => "rate_contended",
    /// Rate-limited UDP queries answered with a truncated reply (TC=1) instead of dropped.
    Slipped => "slipped",
    /// UDP to a DNS port shorter than a DNS header.
    NotQueryShort => "not_query_short",
    /// UDP to a DNS port with QR=1: a response aimed at a server port (reflection).
    NotQueryResponse => "not_query_response",
    /// UDP to a DNS port with an opcode the operator did not allow.
    NotQueryOpcode => "not_query_opcode",
    /// UDP to a DNS port whose question count is not 1.
    NotQueryQdcount => "not_query_qdcount",
    /// Queries every level admitted, shed because the server budget was spent and their
    /// source or prefix is heavy (has spent more than half a burst at some level).
    BudgetShedHeavy => "budget_shed_heavy",
    /// Queries from light sources shed because even the budget's reserve was spent.
    BudgetShedLight => "budget_shed_light",
    /// Answers that match a query (UDP: address, ports, DNS ID) or a TCP connection this
    /// host sent: passed.
    AnswerAdmitted => "answer_admitted",
    /// Answers that match nothing this host sent (spoofed, late, or backending off):
    /// dropped (passed in dry-run).
    AnswerUnsolicited => "answer_unsolicited",
    /// Non-first fragments of an admitted answer's datagram: passed.
    FragmentAdmitted => "fragment_admitted",
    /// Non-first fragments of no admitted answer, charged to their source's buckets as
    /// queries are (they may be a large query's).
    FragmentPoliced => "fragment_policed",
    /// Refused UDP queries dropped instead of slipped: a slip cap (all destinations, or
    /// the destination's prefix) was spent.
    SlipCapped => "slip_capped",
    /// TCP segments to a DNS port, other than connection attempts, of no connection this
    /// server accepted: dropped (so no RST answers a spoofed source).
    TcpUnsolicited => "tcp_unsolicited",
    /// TCP segments with data (queries) on an accepted connection that were charged to
    /// the source's TCP data buckets (by the messages they carry).
    TcpSegmentCharged => "tcp_segment_charged",
    /// The messages those segments were charged: each query counted exactly where XDP's
    /// view of the stream is the server's, else the worst case (one per 14 bytes).
    TcpMessagesCharged => "tcp_messages_charged",
    /// TCP segments on a known connection whose acknowledgement number the server never
    /// sent (blind, spoofed): dropped, so no RST or ACK answers them.
    TcpBadAck => "tcp_bad_ack",
    /// TCP data segments beyond a gap in the stream (an earlier one was lost): dropped
    /// until the missing data arrives, so the stack sees the stream in order.
    TcpOutOfOrder => "tcp_out_of_order",
    /// TCP connection attempts to a DNS port carrying data (TCP Fast Open), or IP
    /// fragments of TCP to a DNS port: dropped (the client retries with a plain SYN; no
    /// stack fragments TCP).
    TcpUnusual => "tcp_unusual",
    /// Queries sampled into the `SAMPLES` ring buffer (one in --sample-every per decision).
    SamplesTaken => "samples_taken",
    /// Samples the ring had no room for: no reader, or one too slow.
    SamplesLost => "samples_lost",
    /// Samples not taken because the samples-per-second cap was spent.
    SamplesCapped => "samples_capped",
    /// UDP queries checked for a DNS cookie (secrets configured) without a server
    /// cookie: no COOKIE option, or a client cookie alone.
    CookieNone => "cookie_none",
    /// Queries with a server cookie a configured secret made for their source, within
    /// the RFC 9018 window: their source is proven and the prefix levels pass them.
    CookieValid => "cookie_valid",
    /// Queries with a server cookie no configured secret made for their source
    /// (forged, mangled, another server's): limited as if they had none.
    CookieInvalid => "cookie_invalid",
    /// Queries with a server cookie a secret made, outside the RFC 9018 window (over an
    /// hour old, or over five minutes ahead): limited as if they had none.
    CookieStale => "cookie_stale",
    /// Proofs recorded from a valid cookie, at most one per source per half
    /// `--proof-ttl`.
    ProvedCookie => "proved_cookie",
    /// Queries from proven sources the server budget admitted while more than half its
    /// burst was spent (where its tiers decide: proven sources are served first).
    BudgetServedProven => "budget_served_proven",
    /// Queries from unproven sources the server budget admitted at such times.
    BudgetServedUnproven => "budget_served_unproven",
    /// Queries from proven sources shed: even their share of the budget was spent.
    BudgetShedProven => "budget_shed_proven",
    /// Unproven UDP queries shed by the budget (counted `budget_shed_*`) and answered
    /// with a truncated reply (TC=1) instead, within the slip caps, so a real client
    /// retries over TCP and proves itself.
    BudgetSlipped => "budget_slipped",
}

counters! {
    /// Index of a per-CPU egress (TC) counter: DNS leaving the interface.
    enum EgressCounter;
    /// All egress counters of one CPU, the single entry of the `EGRESS_COUNTERS` per-CPU array.
    struct EgressCounters;
    /// Every packet the egress program saw.
    Packets => "packets",
    /// Responses leaving (source port in the DNS ports), by protocol and family.
    ResponseUdp4Packets => "response_udp4_packets",
    ResponseUdp4Bytes => "response_udp4_bytes",
    ResponseUdp6Packets => "response_udp6_packets",
    ResponseUdp6Bytes => "response_udp6_bytes",
    ResponseTcp4Packets => "response_tcp4_packets",
    ResponseTcp4Bytes => "response_tcp4_bytes",
    ResponseTcp6Packets => "response_tcp6_packets",
    ResponseTcp6Bytes => "response_tcp6_bytes",
    /// Queries to upstream servers leaving (destination port in the DNS ports).
    UpstreamUdp4Packets => "upstream_udp4_packets",
    UpstreamUdp4Bytes => "upstream_udp4_bytes",
    UpstreamUdp6Packets => "upstream_udp6_packets",
    UpstreamUdp6Bytes => "upstream_udp6_bytes",
    UpstreamTcp4Packets => "upstream_tcp4_packets",
    UpstreamTcp4Bytes => "upstream_tcp4_bytes",
    UpstreamTcp6Packets => "upstream_tcp6_packets",
    UpstreamTcp6Bytes => "upstream_tcp6_bytes",
    /// Upstream queries and TCP segments recorded as awaiting an answer (backending), and
    /// TCP segments of connections this server accepted (their SYN-ACK and answers).
    AwaitedRecorded => "awaited_recorded",
    /// Proofs recorded from completed TCP handshakes: the server sent data on a
    /// connection to the client (the stack does only once the handshake completed, so
    /// the client's address is its own), at most one per source per half `--proof-ttl`.
    ProvedTcp => "proved_tcp",
}

impl EgressCounter {
    /// The packet and byte counters of a class seen leaving: a packet to a DNS port is a
    /// query to an upstream server, one from a DNS port a response. Other classes: none.
    #[inline(always)]
    pub const fn for_class(class: Class) -> Option<(EgressCounter, EgressCounter)> {
        use EgressCounter::*;
        Some(match class {
            Class::Answer {
                l4: L4::Udp,
                family: Family::V4,
            } => (ResponseUdp4Packets, ResponseUdp4Bytes),
            Class::Answer {
                l4: L4::Udp,
                family: Family::V6,
            } => (ResponseUdp6Packets, ResponseUdp6Bytes),
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V4,
            } => (ResponseTcp4Packets, ResponseTcp4Bytes),
            Class::Answer {
                l4: L4::Tcp,
                family: Family::V6,
            } => (ResponseTcp6Packets, ResponseTcp6Bytes),
            Class::Query {
                l4: L4::Udp,
                family: Family::V4,
            } => (UpstreamUdp4Packets, UpstreamUdp4Bytes),
            Class::Query {
                l4: L4::Udp,
                family: Family::V6,
            } => (UpstreamUdp6Packets, UpstreamUdp6Bytes),
            Class::Query {
                l4: L4::Tcp,
                family: Family::V4,
            } => (UpstreamTcp4Packets, UpstreamTcp4Bytes),
            Class::Query {
                l4: L4::Tcp,
                family: Family::V6,
            } => (UpstreamTcp6Packets, UpstreamTcp6Bytes),
            _ => return None,
        })
    }
}
impl Counters {
    /// Counts a refusal at prefix level `index`. Arithmetic on the index, not a table
    /// lookup: the verifier cannot bound a value read from a constant table.
    #[inline(always)]
    pub fn bump_level_limited(&mut self, index: usize) {
        if index < MAX_LEVELS {
            self.values[Counter::RateLimitedLevel0 as usize + index] += 1;
        }
    }

    /// Counts a query the server budget shed, by its tier (`BUDGET_*`): arithmetic, one
    /// path for the verifier.
    #[inline(always)]
    pub fn bump_budget_shed(&mut self, tier: u8) {
        let counter = match tier {
            crate::BUDGET_HEAVY => Counter::BudgetShedHeavy,
            crate::BUDGET_LIGHT => Counter::BudgetShedLight,
            _ => Counter::BudgetShedProven,
        };
        self.bump(counter);
    }

    /// Counts a cookie check's outcome (`COOKIE_*`, in the order of the `Cookie*`
    /// counters): arithmetic, one path for the verifier.
    #[inline(always)]
    pub fn bump_cookie(&mut self, outcome: u8) {
        let index = usize::from(outcome);
        if index <= crate::COOKIE_STALE as usize {
            self.values[Counter::CookieNone as usize + index] += 1;
        }
    }
}

const _: () = assert!(
    Counter::CookieValid as u8 - Counter::CookieNone as u8 == crate::COOKIE_VALID
        && Counter::CookieInvalid as u8 - Counter::CookieNone as u8 == crate::COOKIE_INVALID
        && Counter::CookieStale as u8 - Counter::CookieNone as u8 == crate::COOKIE_STALE
);

impl Counter {
    /// The counter of refusals at each level (contiguous: `bump_level_limited`).
    pub const LEVEL_LIMITED: [Counter; MAX_LEVELS] = [
        Counter::RateLimitedLevel0,
        Counter::RateLimitedLevel1,
        Counter::RateLimitedLevel2,
        Counter::RateLimitedLevel3,
    ];

    /// Whether this counter is the class of a frame (each frame bumps exactly one), as
    /// opposed to `Packets` or a decision on a query.
    pub const fn is_class(self) -> bool {
        let index = self as u32;
        index >= Counter::QueryUdp4 as u32 && index <= Counter::Fragment as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

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
        for (index, counter) in EgressCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn every_dns_class_has_distinct_egress_counters() {
        let mut seen = std::vec::Vec::new();
        for l4 in [L4::Udp, L4::Tcp] {
            for family in [Family::V4, Family::V6] {
                for class in [Class::Query { l4, family }, Class::Answer { l4, family }] {
                    let (packets, bytes) = EgressCounter::for_class(class).unwrap();
                    let stem = packets.name().strip_suffix("_packets").unwrap();
                    assert_eq!(bytes.name().strip_suffix("_bytes"), Some(stem));
                    seen.extend([packets, bytes]);
                }
            }
        }
        seen.sort();
        seen.dedup();
        // Besides them: `packets`, `awaited_recorded` and `proved_tcp`.
        assert_eq!(seen.len() + 3, EgressCounter::ALL.len());
        assert_eq!(EgressCounter::for_class(Class::NonDns), None);
    }

    #[test]
    fn level_counters_are_contiguous() {
        for (index, &counter) in Counter::LEVEL_LIMITED.iter().enumerate() {
            let mut counters = Counters::default();
            counters.bump_level_limited(index);
            assert_eq!(counters.get(counter), 1);
            assert_eq!(counters.values.iter().sum::<u64>(), 1);
        }
    }
}
