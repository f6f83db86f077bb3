//! Hand-made TCP segments over IPv4 raw sockets, as an attacker sends them (no
//! connection behind them), and the segments that come back. Runs in the namespace of
//! the caller (use `Netns::run`); needs root.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A TCP segment's checksum over the IPv4 pseudo-header.
pub fn tcp_checksum(source: [u8; 4], destination: [u8; 4], segment: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(12 + segment.len());
    bytes.extend(source);
    bytes.extend(destination);
    bytes.extend([0, 6]);
    bytes.extend((segment.len() as u16).to_be_bytes());
    bytes.extend(segment);
    crate::packet::internet_checksum(&bytes)
}

pub fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A segment that came back.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// Raw sockets from this namespace's `source` address to `destination`.
pub struct RawTcp {
    send: i32,
    receive: i32,
    source: Ipv4Addr,
    destination: Ipv4Addr,
}

impl RawTcp {
    pub fn open(source: Ipv4Addr, destination: Ipv4Addr) -> Self {
        // SAFETY: plain socket calls; the descriptors are closed on drop.
        let (send, receive) = unsafe {
            let send = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
            let receive = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
            assert!(send >= 0 && receive >= 0, "raw sockets need root");
            let flags = libc::fcntl(receive, libc::F_GETFL);
            libc::fcntl(receive, libc::F_SETFL, flags | libc::O_NONBLOCK);
            (send, receive)
        };
        Self {
            send,
            receive,
            source,
            destination,
        }
    }

    /// Sends one segment (the kernel adds the IP header).
    pub fn send(&self, ports: (u16, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) {
        let mut segment = Vec::with_capacity(20 + payload.len());
        segment.extend(ports.0.to_be_bytes());
        segment.extend(ports.1.to_be_bytes());
        segment.extend(seq.to_be_bytes());
        segment.extend(ack.to_be_bytes());
        segment.extend([5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        segment.extend_from_slice(payload);
        let checksum = tcp_checksum(self.source.octets(), self.destination.octets(), &segment);
        segment[16..18].copy_from_slice(&checksum.to_be_bytes());
        let target = sockaddr(self.destination, 0);
        // SAFETY: a buffer and an address this function owns.
        unsafe {
            libc::sendto(
                self.send,
                segment.as_ptr().cast(),
                segment.len(),
                0,
                (&raw const target).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
        }
    }

    /// The segments from `destination` received within `window` (stops early once
    /// `enough` matched `wanted`).
    pub fn receive(
        &self,
        window: Duration,
        wanted: impl Fn(&Seen) -> bool,
        enough: usize,
    ) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let started = Instant::now();
        while started.elapsed() < window && seen.len() < enough {
            // SAFETY: a buffer this function owns.
            let len = unsafe { libc::recv(self.receive, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if len < 40 {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            if buf[12..16] != self.destination.octets() {
                continue;
            }
            let tcp = usize::from(buf[0] & 0x0f) * 4;
            let field =
                |at: usize| u32::from_be_bytes(buf[tcp + at..tcp + at + 4].try_into().unwrap());
            let segment = Seen {
                source_port: u16::from_be_bytes([buf[tcp], buf[tcp + 1]]),
                destination_port: u16::from_be_bytes([buf[tcp + 2], buf[tcp + 3]]),
                seq: field(4),
                ack: field(8),
                flags: buf[tcp + 13],
            };
            if wanted(&segment) {
                seen.push(segment);
            }
        }
        seen
    }
}

impl Drop for RawTcp {
    fn drop(&mut self) {
        // SAFETY: descriptors this value owns.
        unsafe {
            libc::close(self.send);
            libc::close(self.receive);
        }
    }
}
