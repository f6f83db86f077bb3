//! Frame builder for crafted test packets.
//!
//! A frame is a list of layers, outermost first; `build` serialises it and fills in what
//! a layer's neighbours determine (EtherTypes, next-header numbers, lengths, the IPv4
//! header checksum). Fields that tests break on purpose are set after building.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

#[derive(Clone, Debug)]
pub enum Layer {
    Eth,
    /// A VLAN tag with this TPID (0x8100, 0x88a8).
    Vlan(u16),
    /// IPv4 with `options` (a multiple of 4 bytes), fragment offset in 8-byte units, MF.
    Ipv4 {
        options: Vec<u8>,
        frag_offset: u16,
        more_fragments: bool,
    },
    Ipv6,
    /// An IPv6 option/routing header of this protocol number and 8-byte length units.
    Ipv6Ext {
        protocol: u8,
        len_units: u8,
    },
    /// IPv6 fragment header.
    Ipv6Frag {
        offset: u16,
        more_fragments: bool,
    },
    /// IP authentication header with this many 4-byte units of ICV after the fixed 12 bytes.
    Auth {
        icv_words: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    Tcp {
        src: u16,
        dst: u16,
    },
    /// An L4 protocol the parser does not read (given by number), e.g. ICMP.
    OtherL4(u8),
    Payload(Vec<u8>),
}

pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const DSTOPTS: u8 = 60;

impl Layer {
    pub fn ipv4() -> Self {
        Layer::Ipv4 {
            options: Vec::new(),
            frag_offset: 0,
            more_fragments: false,
        }
    }

    pub fn udp(dst: u16) -> Self {
        Layer::Udp { src: 40000, dst }
    }

    pub fn tcp(dst: u16) -> Self {
        Layer::Tcp { src: 40000, dst }
    }

    /// The number identifying this layer to the layer before it: an EtherType for what
    /// follows Ethernet/VLAN, an IP protocol number for what follows IP.
    fn ether_type(&self) -> u16 {
        match self {
            Layer::Vlan(tpid) => *tpid,
            Layer::Ipv4 { .. } => ETH_P_IPV4,
            Layer::Ipv6 => ETH_P_IPV6,
            _ => ETH_P_ARP,
        }
    }

    fn ip_protocol(&self) -> u8 {
        match self {
            Layer::Ipv6Ext { protocol, .. } => *protocol,
            Layer::Ipv6Frag { .. } => 44,
            Layer::Auth { .. } => 51,
            Layer::Udp { .. } => 17,
            Layer::Tcp { .. } => 6,
            Layer::OtherL4(protocol) => *protocol,
            _ => 59, // IPv6 "no next header"
        }
    }
}

/// Serialises `layers` (outermost first).
pub fn build(layers: &[Layer]) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for (index, layer) in layers.iter().enumerate().rev() {
        let next = layers.get(index + 1);
        let ether_type = next.map_or(ETH_P_ARP, Layer::ether_type);
        let protocol = next.map_or(59, Layer::ip_protocol);
        let mut header = match layer {
            Layer::Eth => {
                let mut eth = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
                eth.extend(ether_type.to_be_bytes());
                eth
            }
            Layer::Vlan(_) => {
                let mut vlan = vec![0x00, 0x64];
                vlan.extend(ether_type.to_be_bytes());
                vlan
            }
            Layer::Ipv4 {
                options,
                frag_offset,
                more_fragments,
            } => ipv4_header(
                options,
                *frag_offset,
                *more_fragments,
                protocol,
                inner.len(),
            ),
            Layer::Ipv6 => {
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend((inner.len() as u16).to_be_bytes());
                ip.extend([protocol, 64]);
                ip.extend(SRC_V6.octets());
                ip.extend(DST_V6.octets());
                ip
            }
            Layer::Ipv6Ext { len_units, .. } => {
                let mut ext = vec![protocol, *len_units];
                ext.resize((usize::from(*len_units) + 1) * 8, 0);
                ext
            }
            Layer::Ipv6Frag {
                offset,
                more_fragments,
            } => {
                let mut frag = vec![protocol, 0];
                frag.extend(((offset << 3) | u16::from(*more_fragments)).to_be_bytes());
                frag.extend([0, 0, 0, 1]);
                frag
            }
            Layer::Auth { icv_words } => {
                let mut auth = vec![protocol, icv_words + 1, 0, 0];
                auth.extend([0, 0, 1, 0, 0, 0, 0, 1]);
                auth.resize(12 + usize::from(*icv_words) * 4, 0);
                auth
            }
            Layer::Udp { src, dst } => {
                let mut udp = Vec::new();
                udp.extend(src.to_be_bytes());
                udp.extend(dst.to_be_bytes());
                udp.extend(((inner.len() + 8) as u16).to_be_bytes());
                udp.extend([0, 0]);
                udp
            }
            Layer::Tcp { src, dst } => {
                let mut tcp = Vec::new();
                tcp.extend(src.to_be_bytes());
                tcp.extend(dst.to_be_bytes());
                tcp.extend([0, 0, 0, 1, 0, 0, 0, 0]);
                tcp.extend([5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
                tcp
            }
            Layer::OtherL4(_) => vec![8, 0, 0, 0, 0, 0, 0, 0],
            Layer::Payload(bytes) => bytes.clone(),
        };
        header.extend_from_slice(&inner);
        inner = header;
    }
    inner
}

fn ipv4_header(
    options: &[u8],
    frag_offset: u16,
    more_fragments: bool,
    protocol: u8,
    payload_len: usize,
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in 4-byte words");
    let header_len = 20 + options.len();
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend(((header_len + payload_len) as u16).to_be_bytes());
    ip.extend([0x12, 0x34]);
    ip.extend(((u16::from(more_fragments) << 13) | frag_offset).to_be_bytes());
    ip.extend([64, protocol, 0, 0]);
    ip.extend(SRC_V4.octets());
    ip.extend(DST_V4.octets());
    ip.extend_from_slice(options);
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip
}

/// A TCP segment from a client (port 40000) to the server's port 53 over IPv4, with
/// these flags, sequence and acknowledgement numbers and payload.
pub fn client_segment(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    const TCP: usize = 14 + 20;
    let mut layers = vec![Layer::Eth, Layer::ipv4(), Layer::tcp(53)];
    if !payload.is_empty() {
        layers.push(Layer::Payload(payload.to_vec()));
    }
    let mut frame = build(&layers);
    frame[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    frame[TCP + 8..TCP + 12].copy_from_slice(&ack.to_be_bytes());
    frame[TCP + 13] = flags;
    frame
}

/// `count` queries for example.com (IDs 0, 1, ...), each behind its 2-byte length: a
/// TCP client's pipelined stream (RFC 7766 framing).
pub fn framed_queries(count: u16) -> Vec<u8> {
    let mut stream = Vec::new();
    for id in 0..count {
        let query = dns_query(id, "example.com");
        stream.extend((query.len() as u16).to_be_bytes());
        stream.extend(query);
    }
    stream
}

/// Swaps source and destination (addresses, then ports) of an IPv4 frame without
/// options or VLAN tags: the frame going the other way.
pub fn reversed(mut frame: Vec<u8>) -> Vec<u8> {
    const IP: usize = 14;
    for index in 0..4 {
        frame.swap(IP + 12 + index, IP + 16 + index);
    }
    let l4 = IP + 20;
    for index in 0..2 {
        frame.swap(l4 + index, l4 + 2 + index);
    }
    frame
}

/// RFC 1071 checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A minimal DNS query for `name` (type A), with this ID.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = Vec::new();
    query.extend(id.to_be_bytes());
    query.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend(label.as_bytes());
    }
    query.extend([0, 0, 1, 0, 1]);
    query
}

/// Byte offset of the IP header in frames `build` makes without VLAN tags.
const IP: usize = 14;

/// A UDP query for example.com from `src` (port 40000) to the server's port 53.
pub fn query_v4_from(src: Ipv4Addr) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Eth,
        Layer::ipv4(),
        Layer::udp(53),
        Layer::Payload(dns_query(1, "example.com")),
    ]);
    frame[IP + 12..IP + 16].copy_from_slice(&src.octets());
    frame
}

/// `query_v4_from` over IPv6.
pub fn query_v6_from(src: Ipv6Addr) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Eth,
        Layer::Ipv6,
        Layer::udp(53),
        Layer::Payload(dns_query(1, "example.com")),
    ]);
    frame[IP + 8..IP + 24].copy_from_slice(&src.octets());
    frame
}

/// A TCP segment the server (port 53) sends to `client` (port 40000), with these flags
/// and payload: what the egress program sees leave. IPv4 or IPv6 as `client` is.
pub fn server_segment_to(client: std::net::IpAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ip = match client {
        std::net::IpAddr::V4(_) => Layer::ipv4(),
        std::net::IpAddr::V6(_) => Layer::Ipv6,
    };
    let mut frame = build(&[
        Layer::Eth,
        ip,
        Layer::Tcp {
            src: 53,
            dst: 40000,
        },
        Layer::Payload(payload.to_vec()),
    ]);
    let tcp = match client {
        std::net::IpAddr::V4(client) => {
            frame[IP + 12..IP + 16].copy_from_slice(&DST_V4.octets());
            frame[IP + 16..IP + 20].copy_from_slice(&client.octets());
            frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
            let checksum = internet_checksum(&frame[IP..IP + 20]);
            frame[IP + 10..IP + 12].copy_from_slice(&checksum.to_be_bytes());
            IP + 20
        }
        std::net::IpAddr::V6(client) => {
            frame[IP + 8..IP + 24].copy_from_slice(&DST_V6.octets());
            frame[IP + 24..IP + 40].copy_from_slice(&client.octets());
            IP + 40
        }
    };
    frame[tcp + 13] = flags;
    frame
}

/// The client cookie `query_with_cookie` sends.
pub const CLIENT_COOKIE: [u8; 8] = *b"\x01\x02\x03\x04\x05\x06\x07\x08";

/// The 24-byte COOKIE option data a server with `secret` gives the client at `addr`
/// (IPv4 in the first 4 bytes) at `timestamp` (UNIX seconds): RFC 9018's, as
/// `dns_xdp_common::cookies` computes it.
pub fn full_cookie(secret: &[u8; 16], addr: [u8; 16], v6: bool, timestamp: u32) -> Vec<u8> {
    use dns_xdp_common::{COOKIE_VERSION, address_words, cookie_hash, secret_key};
    let mut header = [COOKIE_VERSION, 0, 0, 0, 0, 0, 0, 0];
    header[4..].copy_from_slice(&timestamp.to_be_bytes());
    let hash = cookie_hash(
        &secret_key(secret),
        u64::from_le_bytes(CLIENT_COOKIE),
        u64::from_le_bytes(header),
        address_words(&addr),
        v6,
    );
    let mut cookie = CLIENT_COOKIE.to_vec();
    cookie.extend(header);
    cookie.extend(hash.to_le_bytes());
    cookie
}

/// A query for example.com with an OPT record holding `options` (code, data).
pub fn query_with_options(id: u16, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut query = dns_query(id, "example.com");
    query[10..12].copy_from_slice(&1u16.to_be_bytes()); // ARCOUNT
    let mut data = Vec::new();
    for (code, bytes) in options {
        data.extend(code.to_be_bytes());
        data.extend((bytes.len() as u16).to_be_bytes());
        data.extend(*bytes);
    }
    query.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0]); // root, OPT, 4096, TTL 0
    query.extend((data.len() as u16).to_be_bytes());
    query.extend(data);
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_udp_query_that_etherparse_reads_back() {
        let frame = build(&[
            Layer::Eth,
            Layer::Vlan(ETH_P_8021Q),
            Layer::ipv4(),
            Layer::udp(53),
            Layer::Payload(dns_query(7, "example.com")),
        ]);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4: {packet:?}");
        };
        assert_eq!(ip.header().source_addr(), SRC_V4);
        let header = ip.header().to_header();
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
        let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.destination_port(), 53);
        assert_eq!(udp.payload(), dns_query(7, "example.com"));
    }
}
