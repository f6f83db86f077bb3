//! An independent classifier built on etherparse, for the differential test.
//!
//! etherparse does the parsing; this file only maps its result onto dns-xdp's classes,
//! applying the few documented places where dns-xdp's rules differ from etherparse's
//! (docs/ARCHITECTURE.md, "Parser"):
//! - dns-xdp reads two VLAN tags (etherparse three): more is malformed; MACsec is non-DNS;
//! - dns-xdp walks at most 8 IPv6 extension headers: a longer chain is malformed;
//! - a first fragment is classified by its transport header (etherparse stops at
//!   fragmented payloads), without checking the UDP length against the fragment;
//! - a broken header of a protocol dns-xdp does not read (ICMP, IGMP, ARP, MACsec)
//!   makes the frame non-DNS, not malformed.

use dns_xdp_common::{Class, Family, L4, PortSet};
use etherparse::{
    LaxLinkExtSlice, LaxSlicedPacket, NetSlice, SlicedPacket, TcpHeaderSlice, TransportSlice,
    UdpHeaderSlice,
    err::{Layer, packet::SliceError},
};

const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT_HEADERS: usize = 8;

pub fn classify(frame: &[u8], ports: &PortSet) -> Class {
    // The link layer, read leniently so that it is known even when a later layer is broken.
    if let Ok(lax) = LaxSlicedPacket::from_ethernet(frame) {
        let vlan_tags = lax
            .link_exts
            .iter()
            .filter(|ext| matches!(ext, LaxLinkExtSlice::Vlan(_)))
            .count();
        let macsec = lax
            .link_exts
            .iter()
            .any(|ext| matches!(ext, LaxLinkExtSlice::Macsec(_)));
        if vlan_tags > MAX_VLAN_TAGS {
            return Class::Malformed;
        }
        if macsec {
            return Class::NonDns;
        }
    }
    let packet = match SlicedPacket::from_ethernet(frame) {
        Ok(packet) => packet,
        Err(error) => return classify_error(&error),
    };
    let (ipv6, later_fragment, payload) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (
            false,
            ip.header().fragments_offset().value() != 0,
            ip.payload(),
        ),
        Some(NetSlice::Ipv6(ip)) => {
            let exts = ip.extensions();
            let mut count = 0;
            let mut later_fragment = false;
            for ext in exts.clone().into_iter() {
                count += 1;
                if let etherparse::Ipv6ExtensionSlice::Fragment(frag) = ext {
                    later_fragment |= frag.fragment_offset().value() != 0;
                }
            }
            if count > MAX_IPV6_EXT_HEADERS {
                return Class::Malformed;
            }
            (true, later_fragment, ip.payload())
        }
        _ => return Class::NonDns,
    };
    if later_fragment {
        return Class::Fragment;
    }
    let (l4, src, dst) = if payload.fragmented {
        // First fragment: etherparse leaves the transport alone; read its header here.
        match payload.ip_number {
            etherparse::ip_number::UDP => match UdpHeaderSlice::from_slice(payload.payload) {
                Ok(udp) => (L4::Udp, udp.source_port(), udp.destination_port()),
                Err(_) => return Class::Malformed,
            },
            etherparse::ip_number::TCP => match TcpHeaderSlice::from_slice(payload.payload) {
                Ok(tcp) => (L4::Tcp, tcp.source_port(), tcp.destination_port()),
                Err(_) => return Class::Malformed,
            },
            _ => return Class::NonDns,
        }
    } else {
        match &packet.transport {
            Some(TransportSlice::Udp(udp)) => (L4::Udp, udp.source_port(), udp.destination_port()),
            Some(TransportSlice::Tcp(tcp)) => (L4::Tcp, tcp.source_port(), tcp.destination_port()),
            _ => return Class::NonDns,
        }
    };
    Class::of_ports(ports, l4, Family::of_ipv6(ipv6), src, dst)
}

fn classify_error(error: &SliceError) -> Class {
    match error {
        SliceError::Len(len) => match len.layer {
            Layer::Icmpv4
            | Layer::Icmpv4Timestamp
            | Layer::Icmpv4TimestampReply
            | Layer::Icmpv6
            | Layer::Igmp
            | Layer::Arp
            | Layer::MacsecHeader
            | Layer::MacsecPacket => Class::NonDns,
            _ => Class::Malformed,
        },
        SliceError::Macsec(_) => Class::NonDns,
        _ => Class::Malformed,
    }
}
