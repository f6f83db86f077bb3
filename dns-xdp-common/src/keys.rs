//! Keys and values of the state maps (`SOURCES`, `AWAITED`, `FRAGMENTS`, the lists), and
//! their sizes.

use bytemuck::{Pod, Zeroable};

use crate::{Level, NS_PER_SEC, tcp::TcpStream};

/// Default capacity of the per-source table (entries); the loader's `--table-size`.
pub const DEFAULT_TABLE_SIZE: u32 = 262_144;
/// Capacity of each allow/deny list (IPv4 and IPv6 separately).
pub const MAX_LIST_ENTRIES: u32 = 16_384;

/// Address family of a source key.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// An address family: what a key's `family` byte, a list and a flag are of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of a parsed packet (`ipv6`: its IP header is version 6).
    #[inline(always)]
    pub const fn of_ipv6(ipv6: bool) -> Self {
        if ipv6 { Self::V6 } else { Self::V4 }
    }

    pub const fn of(addr: &core::net::IpAddr) -> Self {
        match addr {
            core::net::IpAddr::V4(_) => Self::V4,
            core::net::IpAddr::V6(_) => Self::V6,
        }
    }

    /// The `family` byte of map keys.
    #[inline(always)]
    pub const fn code(self) -> u8 {
        match self {
            Self::V4 => FAMILY_V4,
            Self::V6 => FAMILY_V6,
        }
    }
}

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
        family: Family,
        tcp: bool,
    ) -> Self {
        Self {
            remote,
            remote_port,
            local_port,
            id,
            family: family.code(),
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
    pub const fn new(remote: [u8; 16], id: u32, family: Family) -> Self {
        Self {
            remote,
            id,
            family: family.code(),
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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

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
