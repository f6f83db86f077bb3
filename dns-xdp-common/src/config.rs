//! The runtime configuration the loader writes and the programs read once per packet:
//! ports, prefix levels, limits, flags.

use bytemuck::{Pod, Zeroable};

use crate::{CookieSecrets, Family, Limit, PortSet};

/// Config flag: count would-be drops, drop nothing.
pub const FLAG_DRY_RUN: u16 = 1;
/// Config flag: the IPv4 allow/deny list has entries (else its lookup is skipped).
pub const FLAG_LIST_V4: u16 = 2;
/// Config flag: the IPv6 allow/deny list has entries.
pub const FLAG_LIST_V6: u16 = 4;
/// Config flag: refuse UDP datagrams to a DNS port that cannot be queries.
pub const FLAG_SANITY: u16 = 8;

/// Config flag: admit answers (packets from a DNS port) only when they answer a query
/// this host sent (backending: a resolver, a forwarder, the host's own lookups); off,
/// every answer is dropped (an authoritative-only server sends no queries).
pub const FLAG_BACKENDING: u16 = 16;

/// Config flag: answer UDP queries the server budget sheds from unproven sources with a
/// truncated reply (TC=1, within the slip caps), so that a real client retries over TCP,
/// proves its address and is served first.
pub const FLAG_BUDGET_SLIP: u16 = 32;

/// DNS opcodes (RFC 6895) an operator may allow.
pub const OPCODE_QUERY: u8 = 0;
pub const OPCODE_NOTIFY: u8 = 4;
pub const OPCODE_UPDATE: u8 = 5;
/// Opcodes allowed unless configured otherwise: QUERY, NOTIFY, UPDATE.
pub const DEFAULT_OPCODES: u16 = 1 << OPCODE_QUERY | 1 << OPCODE_NOTIFY | 1 << OPCODE_UPDATE;

/// Runtime configuration, the single entry of the `CONFIG` array map. The loader writes
/// it before attaching; the programs read it once per packet.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub struct Config {
    /// Destination port in the set: a query to us; source port in the set: an answer.
    pub dns_ports: PortSet,
    /// Prefix levels, narrowest first: a query passes only if every level that is on
    /// admits it. Level 0 is the per-source limit (`--rate`, `--v4-prefix`, …).
    pub levels: [Level; MAX_LEVELS],
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Bit n set: opcode n is allowed in queries (when `FLAG_SANITY` is set).
    pub allowed_opcodes: u16,
    /// Answer one in `slip` rate-limited UDP queries with a truncated reply; 0: never.
    pub slip: u32,
    /// The server budget: queries/s the server behind can answer, shared by all
    /// sources (`budget_gcra`); off when its interval is 0.
    pub budget: Limit,
    /// Slipped replies to all destinations together: beyond it a refused query is
    /// dropped, not slipped (slip must not turn the server into a reflector).
    pub slip_cap: Limit,
    /// Slipped replies to one destination prefix (`SLIP_V4_PREFIX`, `SLIP_V6_PREFIX`).
    pub slip_prefix_cap: Limit,
    /// Samples per second to the `SAMPLES` ring, all CPUs together: beyond it a query
    /// due to be sampled is not (counted `samples_capped`), so a flood costs at most this.
    pub sample_cap: Limit,
    /// Sample one in `sample_every` queries of each decision (counted per CPU); 0: off.
    pub sample_every: u32,
    /// Budget queries a CPU draws into its credit at once (`budget_chunk`,
    /// `budget_chunk_size` for the CPUs there are); 0: every query charged alone.
    pub budget_chunk: u32,
    /// Counts the configurations written to this instance: a writer writes the spare
    /// slot with the live generation + 1 and flips only if the live one is still the one
    /// it read (the programs ignore it).
    pub generation: u64,
    /// Server secrets for DNS cookies (`cookies`): a query with a valid server cookie
    /// proves its source and is exempt from the prefix levels; off with no secret.
    pub cookies: CookieSecrets,
    /// How long a source stays proven after its last proof (a valid cookie, or a TCP
    /// handshake completed with this server), in ns; 0: proofs are not recorded.
    pub proof_ttl_ns: u64,
}

/// The destination prefixes slip's per-prefix cap counts by: a victim's network, as a
/// reflection attack would aim at it.
pub const SLIP_V4_PREFIX: u8 = 24;
pub const SLIP_V6_PREFIX: u8 = 48;
/// Slots of the per-prefix slip caps (64 KiB of kernel memory).
pub const SLIP_PREFIX_SLOTS: u32 = 8192;

/// FNV-1a over a destination prefix's bytes and its family: spreads prefixes over the
/// slip caps' slots. Not keyed: colliding prefixes share a cap, which only makes their
/// slips rarer, never more frequent.
#[inline(always)]
pub fn slip_prefix_hash(prefix: &[u8], family: u8) -> u32 {
    let mut hash = 0x811c_9dc5u32 ^ u32::from(family);
    hash = hash.wrapping_mul(0x0100_0193);
    for &byte in prefix {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Prefix levels limited at once.
pub const MAX_LEVELS: usize = 4;

/// One prefix level: which sources share a bucket, and the bucket's limit.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct Level {
    pub limit: Limit,
    /// Mask applied to IPv6 sources, from `v6_prefix_len`.
    pub v6_mask: [u8; 16],
    /// Mask applied to IPv4 sources, from `v4_prefix_len`.
    pub v4_mask: [u8; 4],
    pub v4_prefix_len: u8,
    pub v6_prefix_len: u8,
    pub _reserved: [u8; 2],
}

impl Level {
    pub const fn new(v4_prefix_len: u8, v6_prefix_len: u8, limit: Limit) -> Self {
        Self {
            limit,
            v6_mask: prefix_mask(v6_prefix_len),
            v4_mask: prefix_mask(v4_prefix_len),
            v4_prefix_len,
            v6_prefix_len,
            _reserved: [0; 2],
        }
    }
}

impl Config {
    #[inline(always)]
    pub const fn dry_run(&self) -> bool {
        self.flags & FLAG_DRY_RUN != 0
    }

    #[inline(always)]
    pub const fn sanity(&self) -> bool {
        self.flags & FLAG_SANITY != 0
    }

    /// Whether any prefix level limits queries. Branch-free (an OR of the intervals):
    /// in the kernel, a branch per level would split the verifier's states.
    #[inline(always)]
    pub fn limited(&self) -> bool {
        let mut intervals = 0;
        let mut index = 0;
        while index < MAX_LEVELS {
            intervals |= self.levels[index].limit.interval_ns;
            index += 1;
        }
        intervals != 0
    }

    /// Whether queries are metered at all: by a prefix level or by the server budget.
    #[inline(always)]
    pub fn metered(&self) -> bool {
        self.limited() || self.budget.is_on()
    }

    #[inline(always)]
    pub const fn backending(&self) -> bool {
        self.flags & FLAG_BACKENDING != 0
    }

    #[inline(always)]
    pub const fn budget_slip(&self) -> bool {
        self.flags & FLAG_BUDGET_SLIP != 0
    }

    /// Whether the allow/deny list of `family` has entries to look up.
    #[inline(always)]
    pub const fn has_list(&self, family: Family) -> bool {
        self.flags & list_flag(family) != 0
    }

    /// Records whether the allow/deny list of `family` has entries.
    pub fn set_list(&mut self, family: Family, listed: bool) {
        if listed {
            self.flags |= list_flag(family);
        } else {
            self.flags &= !list_flag(family);
        }
    }
}

/// The config flag saying that `family`'s list has entries.
#[inline(always)]
pub const fn list_flag(family: Family) -> u16 {
    match family {
        Family::V4 => FLAG_LIST_V4,
        Family::V6 => FLAG_LIST_V6,
    }
}

/// The mask of a prefix of `len` bits over `N` bytes (`len` clamped to N × 8).
pub const fn prefix_mask<const N: usize>(len: u8) -> [u8; N] {
    let mut mask = [0u8; N];
    let mut index = 0;
    while index < N {
        let start = index as u32 * 8;
        let len = len as u32;
        mask[index] = if len >= start + 8 {
            0xff
        } else if len <= start {
            0
        } else {
            0xffu8 << (8 - (len - start))
        };
        index += 1;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

    #[test]
    fn any_level_on_limits_and_a_budget_meters() {
        let mut config = Config::default();
        assert!(!config.limited() && !config.metered());
        config.levels[3].limit = per_second(10, 5);
        assert!(config.limited() && config.metered());
        config.levels[3].limit = Limit::OFF;
        config.levels[1].limit = per_second(10, 5);
        assert!(config.limited());
        let budget_only = Config {
            budget: per_second(1000, 100),
            ..Config::default()
        };
        assert!(!budget_only.limited() && budget_only.metered());
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask::<4>(32), [255; 4]);
        assert_eq!(prefix_mask::<4>(24), [255, 255, 255, 0]);
        assert_eq!(prefix_mask::<4>(0), [0; 4]);
        assert_eq!(prefix_mask::<4>(9), [255, 128, 0, 0]);
        let v6 = prefix_mask::<16>(64);
        assert_eq!(v6[..8], [255; 8]);
        assert_eq!(v6[8..], [0; 8]);
        assert_eq!(prefix_mask::<16>(127)[15], 0xfe);
    }
}
