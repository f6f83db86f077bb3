//! Cursor-style packet parser, shared by every program that looks at frames.
//!
//! Each layer reads its header through one bounds-checked `header`, checks the header
//! against the bytes the frame really has, and hands the offset of the next header on.
//! Anything inconsistent ends the walk with `Class::Malformed`; a layer we do not read
//! further ends it with `Class::NonDns`. The rules are written down in
//! docs/ARCHITECTURE.md ("Parser") and checked against etherparse by the differential test.

use core::mem::size_of;

use dns_xdp_common::{Class, DNS_HEADER_LEN, Family, L4, PortSet};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still seen on some switches.
const ETH_P_QINQ_LEGACY: u16 = 0x9100;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// VLAN tags read (802.1Q, or QinQ); a frame with more is malformed (dropped): the
/// parser cannot tell whether it is DNS.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked, hop-by-hop included; a longer chain is malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No header starts further into a frame than this. It exceeds any linear XDP frame
/// (one page), so it never changes a verdict; it gives the verifier a bound on offsets.
const MAX_HEADER_OFFSET: usize = 0x3fff;

/// Transport header of a packet that has one.
#[derive(Clone, Copy)]
pub struct Transport {
    pub l4: L4,
    pub family: Family,
    /// Offset of the IP header, to read the source address when it is needed.
    pub l3: usize,
    /// Offset and length of the transport payload (UDP: the DNS message).
    pub payload: usize,
    pub payload_len: usize,
    /// A TCP connection attempt: SYN without ACK.
    pub syn: bool,
    /// The TCP flags byte (`TCP_*`), sequence and acknowledgement numbers; 0 for UDP.
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack_seq: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// The first fragment of a datagram (offset 0, more fragments).
    pub first_fragment: bool,
    /// A later fragment: no transport header (`l4` and the ports mean nothing then).
    pub later_fragment: bool,
    /// The IP identification of a fragment (IPv4's 16 bits, IPv6's 32); 0 otherwise.
    pub fragment_id: u32,
}

impl Transport {
    #[inline(always)]
    pub fn class(&self, ports: &PortSet) -> Class {
        if self.later_fragment {
            return Class::Fragment;
        }
        Class::of_ports(ports, self.l4, self.family, self.src_port, self.dst_port)
    }

    /// This transport as plain integers, to store in a map.
    #[inline(always)]
    pub fn to_stored(self) -> StoredTransport {
        StoredTransport {
            l3: self.l3 as u32,
            payload: self.payload as u32,
            payload_len: self.payload_len as u32,
            bits: u32::from(self.family == Family::V6)
                | u32::from(self.l4 == L4::Tcp) << 1
                | u32::from(self.syn) << 2
                | u32::from(self.first_fragment) << 3
                | u32::from(self.later_fragment) << 4
                | u32::from(self.tcp_flags) << 8,
            ports: u32::from(self.src_port) << 16 | u32::from(self.dst_port),
            fragment_id: self.fragment_id,
            seq: self.seq,
            ack_seq: self.ack_seq,
        }
    }

    /// The transport `stored` holds.
    #[inline(always)]
    pub fn from_stored(stored: StoredTransport) -> Self {
        Self {
            l4: if stored.bits & 2 != 0 {
                L4::Tcp
            } else {
                L4::Udp
            },
            family: Family::of_ipv6(stored.bits & 1 != 0),
            l3: stored.l3 as usize,
            payload: stored.payload as usize,
            payload_len: stored.payload_len as usize,
            syn: stored.bits & 4 != 0,
            tcp_flags: (stored.bits >> 8) as u8,
            seq: stored.seq,
            ack_seq: stored.ack_seq,
            src_port: (stored.ports >> 16) as u16,
            dst_port: stored.ports as u16,
            first_fragment: stored.bits & 8 != 0,
            later_fragment: stored.bits & 16 != 0,
            fragment_id: stored.fragment_id,
        }
    }
}

/// A `Transport` as plain integers (bits: 0 IPv6, 1 TCP, 2 SYN, 3 first fragment, 4 later
/// fragment, 8-15 the TCP flags; ports: the source in the high half), as the `PARSED`
/// map holds it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StoredTransport {
    l3: u32,
    payload: u32,
    payload_len: u32,
    bits: u32,
    ports: u32,
    fragment_id: u32,
    seq: u32,
    ack_seq: u32,
}

/// A frame in memory: `[start, end)` readable.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
    /// Built by this host's stack (egress): its IP lengths are trusted, and may cover
    /// bytes beyond `end` (a socket buffer's payload sits in pages the parser never reads).
    local: bool,
}

/// What a frame's IP lengths may reach when the local stack built it: any IP datagram
/// behind the largest link headers.
const MAX_LOCAL_FRAME_LEN: usize = 0x1_0000 + 64;

/// The IP payload: where it starts, where it ends (by the IP length fields), and what it is.
struct IpPayload {
    l3: usize,
    offset: usize,
    end: usize,
    protocol: u8,
    family: Family,
    /// Carries the first fragment of a datagram: the UDP length covers more than this frame.
    first_fragment: bool,
    /// Carries a later fragment: no transport header.
    later_fragment: bool,
    fragment_id: u32,
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            local: false,
        }
    }

    /// A frame this host's stack sends: see `local`.
    #[inline(always)]
    pub fn local(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            local: true,
        }
    }

    /// The one bounds check and the parser's only `unsafe`: the `T` at `offset`, if it
    /// lies wholly inside the frame. `T` is a header of plain bytes (network-types', or
    /// a byte array), valid for any bit pattern.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Result<&'static T, Class> {
        if offset > MAX_HEADER_OFFSET {
            return Err(Class::Malformed);
        }
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return Err(Class::Malformed);
        }
        // SAFETY: `[at, at + size_of::<T>())` lies inside the frame (checked above),
        // which the kernel keeps in place and unchanged by anyone else until the program
        // returns; any bit pattern is a valid `T`.
        Ok(unsafe { &*(at as *const T) })
    }

    /// How long the frame is, as far as its IP lengths are checked.
    #[inline(always)]
    fn len(&self) -> usize {
        if self.local {
            MAX_LOCAL_FRAME_LEN
        } else {
            self.end - self.start
        }
    }

    /// The source address of the IPv4 header at `l3`.
    #[inline(always)]
    pub fn ipv4_source(&self, l3: usize) -> Result<[u8; 4], Class> {
        Ok(self.header::<Ipv4Hdr>(l3)?.src_addr)
    }

    /// The source address of the IPv6 header at `l3`.
    #[inline(always)]
    pub fn ipv6_source(&self, l3: usize) -> Result<[u8; 16], Class> {
        Ok(self.header::<Ipv6Hdr>(l3)?.src_addr)
    }

    /// The destination address of the IPv4 header at `l3`.
    #[inline(always)]
    pub fn ipv4_destination(&self, l3: usize) -> Result<[u8; 4], Class> {
        Ok(self.header::<Ipv4Hdr>(l3)?.dst_addr)
    }

    /// The destination address of the IPv6 header at `l3`.
    #[inline(always)]
    pub fn ipv6_destination(&self, l3: usize) -> Result<[u8; 16], Class> {
        Ok(self.header::<Ipv6Hdr>(l3)?.dst_addr)
    }

    /// The source address of the packet `transport` describes, in a 16-byte key field
    /// (IPv4 in the first 4 bytes, the rest zero).
    #[inline(always)]
    pub fn source_address(&self, transport: &Transport) -> Option<[u8; 16]> {
        let mut address = [0u8; 16];
        if transport.family == Family::V6 {
            address = self.ipv6_source(transport.l3).ok()?;
        } else {
            address[..4].copy_from_slice(&self.ipv4_source(transport.l3).ok()?);
        }
        Some(address)
    }

    /// The destination address of the packet `transport` describes, as `source_address`.
    #[inline(always)]
    pub fn destination_address(&self, transport: &Transport) -> Option<[u8; 16]> {
        let mut address = [0u8; 16];
        if transport.family == Family::V6 {
            address = self.ipv6_destination(transport.l3).ok()?;
        } else {
            address[..4].copy_from_slice(&self.ipv4_destination(transport.l3).ok()?);
        }
        Some(address)
    }

    /// The ID of the DNS message at `offset` (its first two bytes), if `len` bytes there
    /// hold at least those.
    #[inline(always)]
    pub fn dns_id(&self, offset: usize, len: usize) -> Option<u16> {
        if len < 2 {
            return None;
        }
        Some(be16(*self.header::<[u8; 2]>(offset).ok()?))
    }

    /// The third byte (QR, opcode) and the question count of the DNS header at
    /// `offset`, if `len` bytes there hold one.
    #[inline(always)]
    pub fn dns_header(&self, offset: usize, len: usize) -> Option<(u8, u16)> {
        if len < DNS_HEADER_LEN {
            return None;
        }
        let header = self.header::<[u8; DNS_HEADER_LEN]>(offset).ok()?;
        Some((header[2], be16([header[4], header[5]])))
    }

    /// Parses down to the transport header, or to the IP payload of a later fragment
    /// (`later_fragment`: class `Fragment`). `Err` carries the final class of frames that
    /// have neither: non-DNS, malformed.
    #[inline(always)]
    pub fn transport(&self) -> Result<Transport, Class> {
        let (ether_type, l3) = self.ethernet()?;
        let ip = match ether_type {
            ETH_P_IPV4 => self.ipv4(l3)?,
            ETH_P_IPV6 => self.ipv6(l3)?,
            _ => return Err(Class::NonDns),
        };
        if ip.later_fragment {
            return Ok(Transport {
                l4: L4::Udp,
                family: ip.family,
                l3: ip.l3,
                payload: ip.offset,
                payload_len: ip.end - ip.offset,
                syn: false,
                tcp_flags: 0,
                seq: 0,
                ack_seq: 0,
                src_port: 0,
                dst_port: 0,
                first_fragment: false,
                later_fragment: true,
                fragment_id: ip.fragment_id,
            });
        }
        match ip.protocol {
            IPPROTO_UDP => self.udp(&ip),
            IPPROTO_TCP => self.tcp(&ip),
            _ => Err(Class::NonDns),
        }
    }

    /// Ethernet and up to `MAX_VLAN_TAGS` tags: the inner EtherType and its offset.
    #[inline(always)]
    fn ethernet(&self) -> Result<(u16, usize), Class> {
        let mut ether_type = u16::from_be(self.header::<EthHdr>(0)?.ether_type);
        let mut offset = EthHdr::LEN;
        for _ in 0..MAX_VLAN_TAGS {
            if !matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY) {
                return Ok((ether_type, offset));
            }
            ether_type = u16::from_be(self.header::<VlanHdr>(offset)?.ether_type);
            offset += VlanHdr::LEN;
        }
        if matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY) {
            return Err(Class::Malformed);
        }
        Ok((ether_type, offset))
    }

    #[inline(always)]
    fn ipv4(&self, l3: usize) -> Result<IpPayload, Class> {
        let ip = self.header::<Ipv4Hdr>(l3)?;
        let header_len = usize::from(ip.ihl()); // in bytes already
        let total_len = usize::from(ip.tot_len());
        if ip.version() != 4
            || header_len < Ipv4Hdr::LEN
            || total_len < header_len
            || total_len > self.len() - l3
        {
            return Err(Class::Malformed);
        }
        let mut payload = IpPayload {
            l3,
            offset: l3 + header_len,
            end: l3 + total_len,
            protocol: ip.proto,
            family: Family::V4,
            first_fragment: false,
            later_fragment: false,
            fragment_id: u32::from(be16(ip.id)),
        };
        // One authentication header may sit between IPv4 and the transport (RFC 4302).
        if payload.protocol == IPPROTO_AH {
            (payload.protocol, payload.offset) = self.auth_header(payload.offset, payload.end)?;
        }
        payload.later_fragment = ip.frag_offset() != 0;
        payload.first_fragment = ip.frag_flags() & 1 != 0 && !payload.later_fragment;
        Ok(payload)
    }

    #[inline(always)]
    fn ipv6(&self, l3: usize) -> Result<IpPayload, Class> {
        let ip = self.header::<Ipv6Hdr>(l3)?;
        if ip.version() != 6 {
            return Err(Class::Malformed);
        }
        let payload_len = usize::from(ip.payload_len());
        let available = self.len() - l3 - Ipv6Hdr::LEN;
        // A zero payload length with bytes behind it is a jumbogram: the frame bounds it.
        let end = if payload_len == 0 && available > 0 {
            self.len()
        } else if payload_len <= available {
            l3 + Ipv6Hdr::LEN + payload_len
        } else {
            return Err(Class::Malformed);
        };
        let mut protocol = ip.next_hdr;
        let mut offset = l3 + Ipv6Hdr::LEN;
        let mut fragmented = false;
        let mut later_fragment = false;
        let mut fragment_id = 0;
        // One turn per extension header, and a last one for the header after them.
        for index in 0..=MAX_IPV6_EXT_HEADERS {
            match protocol {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
                | IPPROTO_AH
                    if index == MAX_IPV6_EXT_HEADERS =>
                {
                    return Err(Class::Malformed);
                }
                // RFC 8200 4.1: hop-by-hop options only directly after the IPv6 header.
                IPPROTO_HOPOPTS if index != 0 => return Err(Class::Malformed),
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let [next, len_units] = *self.header::<[u8; 2]>(offset)?;
                    let len = (usize::from(len_units) + 1) * 8;
                    if offset + len > end {
                        return Err(Class::Malformed);
                    }
                    (protocol, offset) = (next, offset + len);
                }
                IPPROTO_FRAGMENT => {
                    let frag = *self.header::<[u8; 8]>(offset)?;
                    if offset + 8 > end {
                        return Err(Class::Malformed);
                    }
                    let offset_and_flags = be16([frag[2], frag[3]]);
                    later_fragment |= offset_and_flags >> 3 != 0;
                    fragmented |= offset_and_flags >> 3 != 0 || offset_and_flags & 1 != 0;
                    fragment_id = u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]);
                    (protocol, offset) = (frag[0], offset + 8);
                }
                IPPROTO_AH => (protocol, offset) = self.auth_header(offset, end)?,
                _ => {
                    return Ok(IpPayload {
                        l3,
                        offset,
                        end,
                        protocol,
                        family: Family::V6,
                        first_fragment: fragmented && !later_fragment,
                        later_fragment,
                        fragment_id,
                    });
                }
            }
        }
        Err(Class::Malformed)
    }

    /// An IP authentication header (RFC 4302) at `offset`: its next header and the
    /// offset after it.
    #[inline(always)]
    fn auth_header(&self, offset: usize, end: usize) -> Result<(u8, usize), Class> {
        const AH_MIN_LEN: usize = 12;
        let [next, len_units] = *self.header::<[u8; 2]>(offset)?;
        let len = (usize::from(len_units) + 2) * 4;
        if len_units == 0 || len < AH_MIN_LEN || offset + len > end {
            return Err(Class::Malformed);
        }
        Ok((next, offset + len))
    }

    #[inline(always)]
    fn udp(&self, ip: &IpPayload) -> Result<Transport, Class> {
        let udp = self.header::<UdpHdr>(ip.offset)?;
        if ip.offset + UdpHdr::LEN > ip.end {
            return Err(Class::Malformed);
        }
        // Zero means "as long as the IP payload" (RFC 2675). A first fragment's length
        // covers the whole datagram, so it cannot be checked against this frame.
        let udp_len = usize::from(be16(udp.len));
        if !ip.first_fragment
            && udp_len != 0
            && (udp_len < UdpHdr::LEN || udp_len > ip.end - ip.offset)
        {
            return Err(Class::Malformed);
        }
        let payload = ip.offset + UdpHdr::LEN;
        let payload_len = if udp_len >= UdpHdr::LEN && !ip.first_fragment {
            udp_len - UdpHdr::LEN
        } else {
            ip.end - payload
        };
        Ok(Transport {
            l4: L4::Udp,
            family: ip.family,
            l3: ip.l3,
            payload,
            payload_len,
            syn: false,
            tcp_flags: 0,
            seq: 0,
            ack_seq: 0,
            src_port: be16(udp.src),
            dst_port: be16(udp.dst),
            first_fragment: ip.first_fragment,
            later_fragment: false,
            fragment_id: ip.fragment_id,
        })
    }

    #[inline(always)]
    fn tcp(&self, ip: &IpPayload) -> Result<Transport, Class> {
        let tcp = self.header::<TcpHdr>(ip.offset)?;
        let header_len = usize::from(tcp.doff()) * 4;
        if header_len < TcpHdr::LEN || ip.offset + header_len > ip.end {
            return Err(Class::Malformed);
        }
        // The flags: byte 13, after ports, numbers and data offset.
        let flags = self.header::<[u8; TcpHdr::LEN]>(ip.offset)?[13];
        Ok(Transport {
            l4: L4::Tcp,
            family: ip.family,
            l3: ip.l3,
            payload: ip.offset + header_len,
            payload_len: ip.end - ip.offset - header_len,
            syn: tcp.syn() != 0 && tcp.ack() == 0,
            tcp_flags: flags,
            seq: u32::from_be_bytes(tcp.seq),
            ack_seq: u32::from_be_bytes(tcp.ack_seq),
            src_port: be16(tcp.source),
            dst_port: be16(tcp.dest),
            first_fragment: ip.first_fragment,
            later_fragment: false,
            fragment_id: ip.fragment_id,
        })
    }
}
