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

/// The longest name on the wire (RFC 1035 §3.1), its root label included.
pub const MAX_NAME_LEN: usize = 255;
/// Labels the scan reads at most: a 255-byte name has at most 127 and its root.
pub const MAX_LABELS: usize = 128;

/// `QuerySample::name_status`: no DNS message in the sample (a later fragment, a SYN, a
/// datagram shorter than a header).
pub const NAME_NONE: u8 = 0;
/// The name ends with its root label within the sample; type and class follow it.
pub const NAME_COMPLETE: u8 = 1;
/// The name goes on past the sample (longer than 255 bytes, or the message ends first):
/// `name_end` is where the last whole label ends.
pub const NAME_TRUNCATED: u8 = 2;
/// A compression pointer where a label should be (never followed: a query's question
/// has nothing before it to point at); `name_end` is where the pointer starts.
pub const NAME_POINTER: u8 = 3;

/// What a scan of a question's name found: `NAME_*`, and where the name ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameScan {
    /// `NAME_*`.
    pub status: u8,
    /// Just past the name's last whole label (its root label included when complete),
    /// or where the pointer starts.
    pub name_end: usize,
}

impl NameScan {
    pub const fn new(status: u8, name_end: usize) -> Self {
        Self { status, name_end }
    }
}

/// One step of a name scan: `label` is the byte at `at` of a name that starts at
/// `start`, in a message whose bytes end at `end`. `Ok`: where the next label starts;
/// `Err`: what the scan found. A compression pointer is never followed (a query's
/// question has nothing before it to point at). The kernel's walk (a `bpf_loop` over
/// the packet) and `scan_name` both take their steps here.
#[inline(always)]
pub const fn label_step(start: usize, at: usize, label: u8, end: usize) -> Result<usize, NameScan> {
    if label & 0xc0 != 0 {
        // A pointer (0b11) or a reserved label type.
        return Err(NameScan::new(NAME_POINTER, at));
    }
    let next = at + 1 + label as usize;
    if label == 0 {
        return Err(NameScan::new(NAME_COMPLETE, next));
    }
    // The root label still has to fit within the 255 bytes, and in the message.
    if next - start >= MAX_NAME_LEN || next >= end {
        return Err(NameScan::new(NAME_TRUNCATED, at));
    }
    Ok(next)
}

/// The scan of the name starting at `start` in `message`, at most `MAX_LABELS` labels.
pub fn scan_name(message: &[u8], start: usize) -> NameScan {
    let mut at = start;
    for _ in 0..MAX_LABELS {
        let Some(&label) = message.get(at) else {
            return NameScan::new(
                if at == start {
                    NAME_NONE
                } else {
                    NAME_TRUNCATED
                },
                at,
            );
        };
        match label_step(start, at, label, message.len()) {
            Ok(next) => at = next,
            Err(scan) => return scan,
        }
    }
    NameScan::new(NAME_TRUNCATED, at)
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

    /// A message: a zeroed header, then `question`.
    fn framed(question: &[u8]) -> std::vec::Vec<u8> {
        let mut message = std::vec![0u8; DNS_HEADER_LEN];
        message.extend_from_slice(question);
        message
    }

    fn wire(name: &str) -> std::vec::Vec<u8> {
        let mut bytes = std::vec::Vec::new();
        for label in name.split('.').filter(|label| !label.is_empty()) {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes
    }

    fn scan(message: &[u8]) -> (u8, usize) {
        let scan = scan_name(message, DNS_HEADER_LEN);
        (scan.status, scan.name_end)
    }

    #[test]
    fn a_complete_name_ends_after_its_root_label() {
        let mut question = wire("www.example.com");
        question.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(
            scan(&framed(&question)),
            (NAME_COMPLETE, DNS_HEADER_LEN + 17)
        );
        assert_eq!(
            scan(&framed(&[0, 0, 2, 0, 1])),
            (NAME_COMPLETE, DNS_HEADER_LEN + 1)
        );
    }

    #[test]
    fn a_pointer_is_reported_where_it_starts_and_not_followed() {
        let mut question = wire("a");
        question.pop();
        question.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(scan(&framed(&question)), (NAME_POINTER, DNS_HEADER_LEN + 2));
        // The reserved label types (0b01, 0b10) are refused the same way.
        assert_eq!(scan(&framed(&[0x41, 0])).0, NAME_POINTER);
        assert_eq!(scan(&framed(&[0x81, 0])).0, NAME_POINTER);
    }

    #[test]
    fn names_past_255_bytes_or_the_message_are_cut_at_a_whole_label() {
        // Five 63-byte labels: 321 bytes, longer than any legal name. Four whole labels
        // (256 bytes) would leave no room for the root label: three are kept.
        let long = [std::str::from_utf8(&[b'x'; 63]).unwrap(); 5].join(".");
        assert_eq!(
            scan(&framed(&wire(&long))),
            (NAME_TRUNCATED, DNS_HEADER_LEN + 3 * 64)
        );
        // A message that ends inside a label, or right after one.
        let message = framed(&wire("abc.example"));
        assert_eq!(
            scan(&message[..DNS_HEADER_LEN + 6]),
            (NAME_TRUNCATED, DNS_HEADER_LEN + 4)
        );
        assert_eq!(
            scan(&message[..DNS_HEADER_LEN + 4]),
            (NAME_TRUNCATED, DNS_HEADER_LEN)
        );
        // Nothing after the header.
        assert_eq!(scan(&message[..DNS_HEADER_LEN]).0, NAME_NONE);
    }

    #[test]
    fn the_longest_legal_name_is_complete() {
        // 127 one-byte labels and the root: 255 bytes.
        let name = ["a"; 127].join(".");
        let question = wire(&name);
        assert_eq!(question.len(), MAX_NAME_LEN);
        assert_eq!(
            scan(&framed(&question)),
            (NAME_COMPLETE, DNS_HEADER_LEN + MAX_NAME_LEN)
        );
        // One byte more is cut before its last label.
        let question = wire(&std::format!("{name}b"));
        assert_eq!(
            scan(&framed(&question)),
            (NAME_TRUNCATED, DNS_HEADER_LEN + MAX_NAME_LEN - 3)
        );
    }
}
