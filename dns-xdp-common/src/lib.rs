//! Types shared by the dns-xdp kernel programs and the loader.
//!
//! Every map key and value is `#[repr(C)]` and derives bytemuck's `Pod`, whose derive
//! refuses to compile a type with padding: both sides see exactly the same bytes.
//! The functions here are plain Rust so that host unit tests can reach them.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod tcp;

use tcp::TcpStream;

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

/// Default capacity of the per-source table (entries); the loader's `--table-size`.
pub const DEFAULT_TABLE_SIZE: u32 = 262_144;
/// Capacity of each allow/deny list (IPv4 and IPv6 separately).
pub const MAX_LIST_ENTRIES: u32 = 16_384;

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A per-source rate limit in GCRA form (the "virtual scheduling" token bucket).
/// `rate` packets per second with bursts of `burst` become an emission interval and a
/// tolerance, so the kernel needs no division.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds between packets at the sustained rate; 0 disables the limit.
    pub interval_ns: u64,
    /// How far a source's theoretical arrival time may run ahead of now: (burst - 1) × interval.
    pub tolerance_ns: u64,
}

impl Limit {
    pub const OFF: Self = Self {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `packets` per `period_ns` with bursts of `burst` packets. `None` when a value is 0
    /// or the interval would round to 0 (more than one packet per nanosecond).
    pub const fn new(packets: u64, period_ns: u64, burst: u64) -> Option<Self> {
        if packets == 0 || burst == 0 {
            return None;
        }
        let interval_ns = period_ns / packets;
        if interval_ns == 0 || interval_ns > MAX_INTERVAL_NS {
            return None;
        }
        match interval_ns.checked_mul(burst - 1) {
            // Keep tat + interval far from overflow for any boot time of the next century.
            Some(tolerance_ns) if tolerance_ns <= MAX_TOLERANCE_NS => Some(Self {
                interval_ns,
                tolerance_ns,
            }),
            _ => None,
        }
    }

    pub const fn is_on(&self) -> bool {
        self.interval_ns != 0
    }

    /// The time `cost` packets take at this rate. No overflow: the interval is at most
    /// `MAX_INTERVAL_NS` (2^48, `new` checks it) and no charge exceeds
    /// `tcp::MAX_SEGMENT_COST` (2^13).
    #[inline(always)]
    pub const fn charge_ns(&self, cost: u64) -> u64 {
        self.interval_ns * cost
    }

    /// The burst this limit admits at once.
    pub const fn burst(&self) -> u64 {
        match self.interval_ns {
            0 => 0,
            interval => self.tolerance_ns / interval + 1,
        }
    }
}

/// The largest tolerance accepted: 2^62 ns (146 years of burst).
pub const MAX_TOLERANCE_NS: u64 = 1 << 62;
/// The longest interval accepted: 2^48 ns (3.3 days between packets).
pub const MAX_INTERVAL_NS: u64 = 1 << 48;

/// GCRA admission: with the source's theoretical arrival time `tat` (0 for a new
/// source) and the time `now`, returns the new `tat` if the packet conforms, `None` if it
/// exceeds the limit. Exact: the n-th packet of a burst at one instant is admitted iff
/// n <= burst, and after that one packet per interval.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, limit: &Limit) -> Option<u64> {
    gcra_charge(tat, now, limit, 1)
}

/// GCRA admission of `cost` packets at once (a TCP segment that carries several
/// queries): conforms if they fit in what is left of the burst, or if the bucket is full
/// (`tat <= now`), so that a charge larger than the burst still passes, into debt, once
/// the source has been quiet long enough. With cost 1 this is `gcra`. Over any stretch
/// the admitted total is at most max(burst, the largest charge) + rate × time.
#[inline(always)]
pub const fn gcra_charge(tat: u64, now: u64, limit: &Limit, cost: u64) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    let charge = limit.charge_ns(cost);
    let burst = limit.tolerance_ns + limit.interval_ns;
    // One comparison for both cases: a charge larger than the burst fits only a full
    // bucket (`tat == now`), any other one what is left of the burst.
    let room = if charge > burst { charge } else { burst };
    let next = tat + charge;
    if next - now > room { None } else { Some(next) }
}

/// The latest theoretical arrival time a bucket can reach under `limit` at `now`. A
/// stored `tat` beyond it is debt run up under an older, slower limit; the programs cut it
/// back to this ceiling, so a raised limit helps from the next interval on.
#[inline(always)]
pub const fn gcra_ceiling(now: u64, limit: &Limit) -> u64 {
    now + limit.tolerance_ns + limit.interval_ns
}

/// Whether a bucket that admitted a query with its new theoretical arrival time `tat` is
/// heavy: it has spent more than half its burst (`tat - now` is the part in use).
#[inline(always)]
pub const fn is_heavy(tat: u64, now: u64, limit: &Limit) -> bool {
    let in_use = tat.saturating_sub(now);
    // The burst spans tolerance + interval.
    in_use > (limit.tolerance_ns + limit.interval_ns) / 2
}

/// Server budget admission: a GCRA at the budget's rate with two tolerances. A heavy
/// query conforms while the budget's `tat` runs at most the burst tolerance ahead of
/// now; a light one while it runs at most twice that plus one interval, a reserve of
/// one more burst that only light queries can draw. Returns the new `tat`, or `None`
/// if the query is to be shed.
///
/// Under sustained overload the admitted total is the budget's rate: light queries
/// are served first and heavy ones get what light ones leave; with only light (or only
/// heavy) queries it is first come, first served, so each source is shed in proportion
/// to what it sends.
#[inline(always)]
pub const fn budget_gcra(tat: u64, now: u64, limit: &Limit, heavy: bool, cost: u64) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    let tolerance = if heavy {
        limit.tolerance_ns
    } else {
        limit.tolerance_ns * 2 + limit.interval_ns
    };
    if tat - now > tolerance {
        None
    } else {
        Some(tat + limit.charge_ns(cost))
    }
}

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

/// DNS opcodes (RFC 6895) an operator may allow.
pub const OPCODE_QUERY: u8 = 0;
pub const OPCODE_NOTIFY: u8 = 4;
pub const OPCODE_UPDATE: u8 = 5;
/// Opcodes allowed unless configured otherwise: QUERY, NOTIFY, UPDATE.
pub const DEFAULT_OPCODES: u16 = 1 << OPCODE_QUERY | 1 << OPCODE_NOTIFY | 1 << OPCODE_UPDATE;
/// The Internet checksum (RFC 1071) of 16-bit words summed into `sum`: carries folded
/// in, then complemented.
#[inline(always)]
pub const fn fold_checksum(mut sum: u64) -> u16 {
    let mut rounds = 0;
    while sum > 0xffff && rounds < 4 {
        sum = (sum & 0xffff) + (sum >> 16);
        rounds += 1;
    }
    !(sum as u16)
}

/// Length of the DNS header.
pub const DNS_HEADER_LEN: usize = 12;

/// Why a UDP datagram to a DNS port cannot be a query, from the third byte of its DNS
/// header (QR and opcode) and its question count; `None` if it can.
#[inline(always)]
pub const fn query_defect(flags: u8, qdcount: u16, allowed_opcodes: u16) -> Option<Counter> {
    if flags & 0x80 != 0 {
        return Some(Counter::NotQueryResponse);
    }
    let opcode = (flags >> 3) & 0x0f;
    if allowed_opcodes & (1 << opcode) == 0 {
        return Some(Counter::NotQueryOpcode);
    }
    if qdcount != 1 {
        return Some(Counter::NotQueryQdcount);
    }
    None
}

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

    /// Whether the allow/deny list of this family has entries to look up.
    #[inline(always)]
    pub const fn has_list(&self, ipv6: bool) -> bool {
        self.flags & if ipv6 { FLAG_LIST_V6 } else { FLAG_LIST_V4 } != 0
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

/// Address family of a source key.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Key of the `SOURCES` map: a source prefix. `level` leaves room for several prefix
/// levels limited at once (e.g. /32 and /24, each with its own bucket).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The masked address; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    pub family: u8,
    pub prefix_len: u8,
    pub level: u8,
    /// Which bucket of the prefix (`BUCKET_*`): UDP queries, TCP connection attempts or
    /// TCP data segments. A UDP flood from a source does not empty the buckets its TCP
    /// fallback (after a slipped reply) is charged to, and a connection attempt does not
    /// spend the query it carries.
    pub tcp: u8,
}

impl SourceKey {
    /// The key of `addr`'s bucket at `level` (its index in the config).
    #[inline(always)]
    pub fn v4(addr: [u8; 4], level: &Level, index: u8) -> Self {
        let mut key = Self {
            family: FAMILY_V4,
            prefix_len: level.v4_prefix_len,
            level: index,
            ..Self::zeroed()
        };
        // Whole words, not bytes: byte-wise masks keep a value live per byte, which the
        // BPF backend spills to the stack of the level walk's callback.
        let masked = u32::from_ne_bytes(addr) & u32::from_ne_bytes(level.v4_mask);
        key.addr[..4].copy_from_slice(&masked.to_ne_bytes());
        key
    }

    #[inline(always)]
    pub fn v6(addr: [u8; 16], level: &Level, index: u8) -> Self {
        let mut key = Self {
            family: FAMILY_V6,
            prefix_len: level.v6_prefix_len,
            level: index,
            ..Self::zeroed()
        };
        key.addr = (u128::from_ne_bytes(addr) & u128::from_ne_bytes(level.v6_mask)).to_ne_bytes();
        key
    }
}

/// `SourceKey::tcp`: the bucket of UDP queries.
pub const BUCKET_UDP: u8 = 0;
/// `SourceKey::tcp`: the bucket of TCP connection attempts (SYNs).
pub const BUCKET_TCP_CONNECT: u8 = 1;
/// `SourceKey::tcp`: the bucket of TCP segments with data (queries) on a connection.
pub const BUCKET_TCP_DATA: u8 = 2;

/// The name of a `BUCKET_*` value, as reports and metrics label it.
pub const fn bucket_name(bucket: u8) -> &'static str {
    match bucket {
        BUCKET_UDP => "udp",
        BUCKET_TCP_CONNECT => "tcp",
        _ => "tcp_data",
    }
}

/// Value of the `SOURCES` map: the source's bucket and what happened to its queries.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time (ns, `bpf_ktime_get_ns` clock).
    pub tat_ns: u64,
    /// Queries admitted by the bucket.
    pub passed: u64,
    /// Queries refused by the bucket and dropped.
    pub dropped: u64,
    /// Queries refused by the bucket but passed because of dry-run.
    pub would_drop: u64,
}

/// Outstanding queries and upstream connections tracked at once (`AWAITED`): when full,
/// the oldest record makes room, and an answer to it is dropped (its resolver retries).
pub const AWAITED_TABLE_SIZE: u32 = 65_536;
/// How long an answer to a UDP query is awaited. Resolvers give up long before.
pub const AWAITED_UDP_NS: u64 = 10 * NS_PER_SEC;
/// How long an upstream TCP connection stays open to inbound segments after this host
/// last sent one on it.
pub const AWAITED_TCP_IDLE_NS: u64 = 60 * NS_PER_SEC;
/// Large answers' IP datagrams whose first fragment was admitted, tracked at once.
pub const FRAGMENT_TABLE_SIZE: u32 = 4_096;
/// How long the rest of an admitted answer's fragments are awaited.
pub const FRAGMENT_WINDOW_NS: u64 = 2 * NS_PER_SEC;

/// Key of the `AWAITED` map: an answer this host waits for, recorded by the egress
/// program from the query (UDP) or any segment (TCP) it sends.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq, Hash)]
pub struct AwaitedKey {
    /// The upstream server's address; IPv4 in the first 4 bytes, the rest zero.
    pub remote: [u8; 16],
    /// Its port (a DNS port) and this host's.
    pub remote_port: u16,
    pub local_port: u16,
    /// The query's DNS ID (UDP); 0 for a TCP connection.
    pub id: u16,
    pub family: u8,
    /// 1 for a TCP connection, 0 for a UDP query.
    pub tcp: u8,
}

impl AwaitedKey {
    /// The record of a UDP query with DNS ID `id` (TCP: a connection, `id` 0) between
    /// this host's `local_port` and `remote_port` at `remote`.
    #[inline(always)]
    pub const fn new(
        remote: [u8; 16],
        remote_port: u16,
        local_port: u16,
        id: u16,
        ipv6: bool,
        tcp: bool,
    ) -> Self {
        Self {
            remote,
            remote_port,
            local_port,
            id,
            family: if ipv6 { FAMILY_V6 } else { FAMILY_V4 },
            tcp: tcp as u8,
        }
    }
}

/// Value of the `AWAITED` map. For a TCP connection a client opened to this server,
/// the egress program also keeps what the server sent (`server_first`,
/// `server_next`, `client_acked`); `dns_xdp` keeps the client's stream.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct AwaitedState {
    /// Until when (`bpf_ktime_get_ns` clock) an answer is admitted.
    pub expires_ns: u64,
    /// The lowest acknowledgement number a client's segment may carry: the server's
    /// initial sequence number + 1 (from its SYN-ACK).
    pub server_first: u32,
    /// The sequence number after the last the server sent: the highest acknowledgement
    /// a client can send. A segment acknowledging outside these two is blind (spoofed).
    pub server_next: u32,
    /// How far the server has acknowledged the client's stream.
    pub client_acked: u32,
    pub stream: TcpStream,
}

/// Key of the `FRAGMENTS` map: an IP datagram whose first fragment was an admitted answer.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// The sender's address; IPv4 in the first 4 bytes, the rest zero.
    pub remote: [u8; 16],
    /// The IP identification (IPv4's 16 bits, or the IPv6 fragment header's 32).
    pub id: u32,
    pub family: u8,
    pub _reserved: [u8; 3],
}

impl FragmentKey {
    /// The record of the datagram with IP identification `id` from `remote`.
    #[inline(always)]
    pub const fn new(remote: [u8; 16], id: u32, ipv6: bool) -> Self {
        Self {
            remote,
            id,
            family: if ipv6 { FAMILY_V6 } else { FAMILY_V4 },
            _reserved: [0; 3],
        }
    }
}

/// What an allow/deny list entry does.
pub const LIST_ALLOW: u32 = 1;
pub const LIST_DENY: u32 = 2;

/// Value of the `LIST_V4`/`LIST_V6` LPM tries: the longest matching prefix decides.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// `LIST_ALLOW` or `LIST_DENY`.
    pub action: u32,
    pub _reserved: u32,
    /// Queries that matched this entry.
    pub hits: u64,
}

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
    /// Queries refused after their bucket changed under them too many times in a row.
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
                ipv6: false,
            } => (ResponseUdp4Packets, ResponseUdp4Bytes),
            Class::Answer {
                l4: L4::Udp,
                ipv6: true,
            } => (ResponseUdp6Packets, ResponseUdp6Bytes),
            Class::Answer {
                l4: L4::Tcp,
                ipv6: false,
            } => (ResponseTcp4Packets, ResponseTcp4Bytes),
            Class::Answer {
                l4: L4::Tcp,
                ipv6: true,
            } => (ResponseTcp6Packets, ResponseTcp6Bytes),
            Class::Query {
                l4: L4::Udp,
                ipv6: false,
            } => (UpstreamUdp4Packets, UpstreamUdp4Bytes),
            Class::Query {
                l4: L4::Udp,
                ipv6: true,
            } => (UpstreamUdp6Packets, UpstreamUdp6Bytes),
            Class::Query {
                l4: L4::Tcp,
                ipv6: false,
            } => (UpstreamTcp4Packets, UpstreamTcp4Bytes),
            Class::Query {
                l4: L4::Tcp,
                ipv6: true,
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
}

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
    unsafe impl aya::Pod for super::Level {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::EgressCounters {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::ListEntry {}
    unsafe impl aya::Pod for super::AwaitedKey {}
    unsafe impl aya::Pod for super::AwaitedState {}
    unsafe impl aya::Pod for super::FragmentKey {}
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
        for (index, counter) in EgressCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn every_dns_class_has_distinct_egress_counters() {
        let mut seen = std::vec::Vec::new();
        for l4 in [L4::Udp, L4::Tcp] {
            for ipv6 in [false, true] {
                for class in [Class::Query { l4, ipv6 }, Class::Answer { l4, ipv6 }] {
                    let (packets, bytes) = EgressCounter::for_class(class).unwrap();
                    let stem = packets.name().strip_suffix("_packets").unwrap();
                    assert_eq!(bytes.name().strip_suffix("_bytes"), Some(stem));
                    seen.extend([packets, bytes]);
                }
            }
        }
        seen.sort();
        seen.dedup();
        // Besides them: `packets` and `awaited_recorded`.
        assert_eq!(seen.len() + 2, EgressCounter::ALL.len());
        assert_eq!(EgressCounter::for_class(Class::NonDns), None);
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

    fn per_second(rate: u64, burst: u64) -> Limit {
        Limit::new(rate, NS_PER_SEC, burst).unwrap()
    }

    /// Packets admitted when `count` arrive at the instants `at(i)`.
    fn admitted(limit: &Limit, count: u64, at: impl Fn(u64) -> u64) -> u64 {
        let mut tat = 0;
        let mut admitted = 0;
        for index in 0..count {
            if let Some(next) = gcra(tat, at(index), limit) {
                tat = next;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn gcra_admits_exactly_the_burst_at_one_instant() {
        for (rate, burst) in [
            (1, 1),
            (10, 20),
            (1000, 1),
            (10_000_000, 5000),
            (1, 1_000_000),
        ] {
            let limit = per_second(rate, burst);
            assert_eq!(limit.burst(), burst);
            assert_eq!(
                admitted(&limit, burst * 2 + 10, |_| 1_000_000),
                burst,
                "{rate}/s {burst}"
            );
        }
    }

    #[test]
    fn gcra_admits_the_rate_after_the_burst() {
        // 10/s, burst 20, one packet every millisecond from 0 to 10 s inclusive: 20 + 10 × 10.
        let limit = per_second(10, 20);
        assert_eq!(admitted(&limit, 10_001, |i| 5 + i * 1_000_000), 20 + 100);
        // A source at exactly the rate is never refused.
        assert_eq!(admitted(&limit, 1000, |i| 7 + i * 100_000_000), 1000);
        // 10 M/s, burst 1: one packet per 100 ns, whatever arrives in between.
        let fast = per_second(10_000_000, 1);
        assert_eq!(admitted(&fast, 1_000_000, |i| 1 + i * 10), 100_000);
    }

    #[test]
    fn gcra_refills_after_idle_time_but_not_beyond_the_burst() {
        let limit = per_second(100, 5);
        let mut tat = gcra(0, 1_000, &limit).unwrap();
        for _ in 0..4 {
            tat = gcra(tat, 1_000, &limit).unwrap();
        }
        assert_eq!(gcra(tat, 1_000, &limit), None);
        // An hour later the bucket is full again: 5 at once, not more.
        let later = 1_000 + 3600 * NS_PER_SEC;
        assert_eq!(admitted(&limit, 50, |_| later), 5);
    }

    #[test]
    fn a_raised_limit_forgives_debt_beyond_one_bucket() {
        let slow = per_second(1, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 1_000, &slow).unwrap();
        }
        let fast = per_second(1000, 1000);
        assert_eq!(gcra(tat, 1_000, &fast), None, "the old debt still refuses");
        let ceiling = gcra_ceiling(1_000, &fast);
        assert!(tat > ceiling);
        // Cut back to the ceiling, the bucket admits again one interval later.
        assert_eq!(gcra(ceiling, 1_000 + fast.interval_ns - 1, &fast), None);
        assert!(gcra(ceiling, 1_000 + fast.interval_ns, &fast).is_some());
    }

    #[test]
    fn checksums_fold_as_rfc_1071_says() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to 2ddf0, folded ddf2.
        assert_eq!(fold_checksum(0x0001 + 0xf203 + 0xf4f5 + 0xf6f7), !0xddf2);
        assert_eq!(fold_checksum(0), 0xffff);
        assert_eq!(fold_checksum(0xffff), 0);
    }

    #[test]
    fn only_plausible_queries_pass_the_sanity_check() {
        let query = 0x01; // RD
        assert_eq!(query_defect(query, 1, DEFAULT_OPCODES), None);
        assert_eq!(
            query_defect(0x80 | query, 1, DEFAULT_OPCODES),
            Some(Counter::NotQueryResponse)
        );
        assert_eq!(query_defect(OPCODE_NOTIFY << 3, 1, DEFAULT_OPCODES), None);
        assert_eq!(
            query_defect(2 << 3, 1, DEFAULT_OPCODES),
            Some(Counter::NotQueryOpcode)
        );
        assert_eq!(
            query_defect(OPCODE_UPDATE << 3, 1, 1),
            Some(Counter::NotQueryOpcode)
        );
        assert_eq!(
            query_defect(query, 0, DEFAULT_OPCODES),
            Some(Counter::NotQueryQdcount)
        );
        assert_eq!(
            query_defect(query, 2, DEFAULT_OPCODES),
            Some(Counter::NotQueryQdcount)
        );
    }

    #[test]
    fn limits_reject_zero_and_overflow() {
        assert_eq!(Limit::new(0, NS_PER_SEC, 5), None);
        assert_eq!(Limit::new(5, NS_PER_SEC, 0), None);
        assert_eq!(Limit::new(2_000_000_000, NS_PER_SEC, 5), None);
        assert_eq!(Limit::new(1, NS_PER_SEC, u64::MAX), None);
        assert!(Limit::new(1, NS_PER_SEC, u64::from(u32::MAX)).is_some());
        assert_eq!(
            Limit::new(600, 60 * NS_PER_SEC, 1).unwrap().interval_ns,
            100_000_000
        );
    }

    #[test]
    fn gcra_does_not_overflow_at_extreme_times() {
        let limit = per_second(1, u64::from(u32::MAX));
        let now = u64::MAX - (MAX_TOLERANCE_NS + 2 * NS_PER_SEC);
        assert!(gcra(0, now, &limit).is_some());
        assert!(gcra(now + limit.tolerance_ns, now, &limit).is_some());
    }

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
    fn level_counters_are_contiguous() {
        for (index, &counter) in Counter::LEVEL_LIMITED.iter().enumerate() {
            let mut counters = Counters::default();
            counters.bump_level_limited(index);
            assert_eq!(counters.get(counter), 1);
            assert_eq!(counters.values.iter().sum::<u64>(), 1);
        }
    }

    #[test]
    fn heavy_means_more_than_half_a_burst_in_use() {
        let limit = per_second(10, 20); // interval 100 ms, burst 20 = 2 s of tat ahead
        let now = 100 * NS_PER_SEC;
        assert!(!is_heavy(now + limit.interval_ns, now, &limit));
        assert!(!is_heavy(now + NS_PER_SEC, now, &limit)); // exactly half
        assert!(is_heavy(now + NS_PER_SEC + 1, now, &limit));
        assert!(!is_heavy(now - 5, now, &limit));
    }

    /// Admissions at one instant, heavy and light, from an idle budget.
    fn budget_admissions(limit: &Limit, heavy_first: u64, light_then: u64) -> (u64, u64) {
        let now = 50 * NS_PER_SEC;
        let mut tat = 0;
        let mut admitted = (0, 0);
        for (count, heavy) in [(heavy_first, true), (light_then, false)] {
            for _ in 0..count {
                if let Some(next) = budget_gcra(tat, now, limit, heavy, 1) {
                    tat = next;
                    if heavy {
                        admitted.0 += 1;
                    } else {
                        admitted.1 += 1;
                    }
                }
            }
        }
        admitted
    }

    #[test]
    fn the_budget_keeps_a_reserve_for_light_queries() {
        let limit = per_second(1000, 100);
        // Heavy queries get the burst and no more; light ones still find a second burst.
        assert_eq!(budget_admissions(&limit, 1000, 1000), (100, 100));
        // Light queries alone get both bursts.
        assert_eq!(budget_admissions(&limit, 0, 1000), (0, 200));
        // Over time, the budget's rate: 1 s of heavy arrivals every 100 µs (10 000/s)
        // gets 1 000/s plus the burst.
        let mut tat = 0;
        let mut admitted = 0;
        for step in 0..10_000u64 {
            let now = NS_PER_SEC + step * 100_000;
            if let Some(next) = budget_gcra(tat, now, &limit, true, 1) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100 + 1000 - 1);
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

    #[test]
    fn source_keys_group_by_prefix_and_level() {
        let level24 = Level::new(24, 48, Limit::OFF);
        let a = SourceKey::v4([198, 18, 7, 1], &level24, 1);
        let b = SourceKey::v4([198, 18, 7, 200], &level24, 1);
        let c = SourceKey::v4([198, 18, 8, 1], &level24, 1);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.addr[..4], [198, 18, 7, 0]);
        let level32 = Level::new(32, 64, Limit::OFF);
        let host = |d| SourceKey::v4([198, 18, 7, d], &level32, 0);
        assert_ne!(host(1), host(200));
        let mut x = [0x20, 1, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1];
        let p = SourceKey::v6(x, &level32, 0);
        x[15] = 99;
        x[8] = 7;
        assert_eq!(p, SourceKey::v6(x, &level32, 0));
        x[7] = 10;
        assert_ne!(p, SourceKey::v6(x, &level32, 0));
        // Two levels with one prefix keep separate buckets; two families never collide.
        assert_ne!(
            SourceKey::v4([1, 2, 3, 4], &level32, 0),
            SourceKey::v4([1, 2, 3, 4], &level32, 1)
        );
        let both32 = Level::new(32, 32, Limit::OFF);
        assert_ne!(
            SourceKey::v4([0; 4], &both32, 0),
            SourceKey::v6([0; 16], &both32, 0)
        );
    }
}
