//! Sampled queries: the record `dns_xdp` puts in the `SAMPLES` ring buffer for one in N
//! queries per decision (capped per second), the decisions it names, and the scan of a
//! question's name the kernel and the host tests share.

use bytemuck::{Pod, Zeroable};

use crate::{DNS_HEADER_LEN, MAX_NAME_LEN};

/// Why a query got its verdict, as a sample records it (and `SAMPLED_TYPES` counts it).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Passed every limit configured (or none was).
    Admitted = 0,
    /// From an allow-listed prefix.
    Allowed = 1,
    /// From a deny-listed prefix.
    Denied = 2,
    /// Refused by a prefix level's bucket (`level` says which) and dropped.
    Limited = 3,
    /// Refused by a level (or, unproven, shed by the budget) and answered with a
    /// truncated reply (TC=1, rcode NOERROR).
    Slipped = 4,
    /// Admitted by every level, shed by the server budget.
    BudgetShed = 5,
    /// A UDP datagram to a DNS port that cannot be a query (sanity).
    NotQuery = 6,
    /// A TCP segment the TCP rules refused (no connection, bad ACK, out of order, unusual).
    TcpRefused = 7,
}

impl Decision {
    /// Every decision, in index order.
    pub const ALL: [Decision; DECISIONS] = [
        Decision::Admitted,
        Decision::Allowed,
        Decision::Denied,
        Decision::Limited,
        Decision::Slipped,
        Decision::BudgetShed,
        Decision::NotQuery,
        Decision::TcpRefused,
    ];

    /// Stable snake_case name (log lines, metrics, `top --queries`).
    pub const fn name(self) -> &'static str {
        match self {
            Decision::Admitted => "admitted",
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Limited => "limited",
            Decision::Slipped => "slipped",
            Decision::BudgetShed => "budget_shed",
            Decision::NotQuery => "not_query",
            Decision::TcpRefused => "tcp_refused",
        }
    }

    /// The decision numbered `index`, if any.
    pub fn from_index(index: u8) -> Option<Self> {
        Self::ALL.get(usize::from(index)).copied()
    }

    /// Whether the query was refused (dropped or slipped; passed only in dry-run).
    pub const fn refused(self) -> bool {
        !matches!(self, Decision::Admitted | Decision::Allowed)
    }
}

/// Decisions a sample can record.
pub const DECISIONS: usize = 8;

/// `QuerySample::level` when no level decided.
pub const NO_LEVEL: u8 = 0xff;

/// Bytes of the DNS message a sample keeps: the header and the longest legal question
/// (a 255-byte name, its type and class), so a well-formed question is never cut (and
/// one spare byte, to keep the record a multiple of 8 bytes).
pub const SAMPLE_MESSAGE_LEN: usize = DNS_HEADER_LEN + MAX_NAME_LEN + 4 + 1;
/// One sampled query, as `dns_xdp` writes it to the `SAMPLES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct QuerySample {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the query was decided.
    pub time_ns: u64,
    /// The source address: IPv4 in the first 4 bytes, the rest zero.
    pub source: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// 0 UDP, 1 TCP (`crate::L4` order).
    pub protocol: u8,
    /// The `Decision`, as its number.
    pub decision: u8,
    /// The level that refused it (`Decision::Limited`, `Decision::Slipped`), else `NO_LEVEL`.
    pub level: u8,
    /// That level's prefix length for the source's family; else the address's full length.
    pub prefix_len: u8,
    /// The XDP action taken (pass in dry-run, whatever the decision).
    pub action: u8,
    /// `NAME_*`: what the scan of the question's name found.
    pub name_status: u8,
    pub _reserved: u8,
    /// Bytes of `message` filled (0: none).
    pub message_len: u16,
    /// Offset in `message` just past the name's last whole label (its root label included
    /// when `NAME_COMPLETE`).
    pub name_end: u16,
    /// The question's type and class (`NAME_COMPLETE` only, else 0).
    pub qtype: u16,
    pub qclass: u16,
    /// The DNS message from its header on, as received (a TCP segment's first message).
    pub message: [u8; SAMPLE_MESSAGE_LEN],
}

/// The question's type and class after a complete name ending at `name_end`, if the
/// first `len` bytes hold them.
#[inline(always)]
pub fn question_type(
    message: &[u8; SAMPLE_MESSAGE_LEN],
    len: usize,
    name_end: usize,
) -> Option<(u16, u16)> {
    if name_end + 4 > len {
        return None;
    }
    let byte = |at: usize| message.get(at).map_or(0, |&byte| u16::from(byte));
    Some((
        byte(name_end) << 8 | byte(name_end + 1),
        byte(name_end + 2) << 8 | byte(name_end + 3),
    ))
}

/// Question types counted apart in `SAMPLED_TYPES` (the others share `QTYPE_OTHER`):
/// the ones floods and amplification use, and the everyday ones.
pub const COUNTED_QTYPES: [u16; 17] = [
    1,   // A
    2,   // NS
    5,   // CNAME
    6,   // SOA
    12,  // PTR
    15,  // MX
    16,  // TXT
    28,  // AAAA
    33,  // SRV
    35,  // NAPTR
    43,  // DS
    46,  // RRSIG
    48,  // DNSKEY
    64,  // SVCB
    65,  // HTTPS
    252, // AXFR
    255, // ANY
];
/// `SAMPLED_TYPES` slot of a type not in `COUNTED_QTYPES`.
pub const QTYPE_OTHER: usize = COUNTED_QTYPES.len();
/// `SAMPLED_TYPES` slot of a sample without a complete question.
pub const QTYPE_NONE: usize = COUNTED_QTYPES.len() + 1;
/// Slots per decision in `SAMPLED_TYPES`.
pub const QTYPE_SLOTS: usize = COUNTED_QTYPES.len() + 2;

/// The `SAMPLED_TYPES` slot of `qtype`.
#[inline(always)]
pub fn qtype_slot(qtype: u16) -> usize {
    let mut slot = 0;
    while slot < COUNTED_QTYPES.len() {
        if COUNTED_QTYPES[slot] == qtype {
            return slot;
        }
        slot += 1;
    }
    QTYPE_OTHER
}

/// Samples by decision and question type, one copy per CPU (the `SAMPLED_TYPES` value).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SampledTypes {
    pub counts: [[u64; QTYPE_SLOTS]; DECISIONS],
}

impl SampledTypes {
    /// Element-wise sum, to fold the per-CPU copies into one.
    pub fn add(&mut self, other: &SampledTypes) {
        for (sums, values) in self.counts.iter_mut().zip(&other.counts) {
            for (sum, value) in sums.iter_mut().zip(values) {
                *sum = sum.wrapping_add(*value);
            }
        }
    }
}

/// The `SAMPLES` ring buffer's size: about 3 400 samples, several seconds at the
/// default cap for a reader that falls behind.
pub const SAMPLE_RING_BYTES: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_types_follow_a_complete_name() {
        let mut message = [0u8; SAMPLE_MESSAGE_LEN];
        message[12..21].copy_from_slice(&[3, b'w', b'w', b'w', 0, 0, 28, 0, 1]);
        assert_eq!(question_type(&message, 21, 17), Some((28, 1)));
        assert_eq!(question_type(&message, 20, 17), None);
    }

    #[test]
    fn qtype_slots() {
        assert_eq!(qtype_slot(1), 0);
        assert_eq!(qtype_slot(255), COUNTED_QTYPES.len() - 1);
        assert_eq!(qtype_slot(99), QTYPE_OTHER);
        assert_eq!(Decision::from_index(7), Some(Decision::TcpRefused));
        assert_eq!(Decision::from_index(8), None);
    }
}
