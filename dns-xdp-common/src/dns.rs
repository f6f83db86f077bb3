//! DNS message checks (header sanity) and the Internet checksum.

use crate::Counter;

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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::*;

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
}
