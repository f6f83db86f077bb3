//! The set of ports that carry DNS.

use bytemuck::{Pod, Zeroable};

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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

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
}
