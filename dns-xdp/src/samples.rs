//! Sampled queries: read from the `SAMPLES` ring buffer, decoded (names, types and
//! classes by hickory-proto, registrable domains by the public suffix list), and shown
//! as JSON log lines (`dns-xdp log`) or as the top names, domains and types of each
//! refused prefix (`dns-xdp top --queries`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, RingBuf};
use dns_xdp_common::{
    DNS_HEADER_LEN, NAME_COMPLETE, NAME_POINTER, NAME_TRUNCATED, maps as spec,
    samples::{Decision, NO_LEVEL, QuerySample},
};
use hickory_proto::{
    rr::{DNSClass, Name, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};
use ipnet::IpNet;
use serde_json::{Value, json};

/// Reads the samples one instance's `dns_xdp` puts in its ring buffer.
pub struct SampleReader {
    ring: RingBuf<MapData>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (the samples' clock), in ns.
    wall_offset_ns: i128,
}

impl SampleReader {
    /// The reader of a loaded object's ring (`Programs::take_samples`).
    pub fn new(map: Map) -> anyhow::Result<Self> {
        Ok(Self {
            ring: RingBuf::try_from(map).context("SAMPLES is not a ring buffer")?,
            wall_offset_ns: wall_offset_ns(),
        })
    }

    /// The reader of the ring pinned in the instance directory `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(spec::SAMPLES.name);
        let data = MapData::from_pin(&path).with_context(|| {
            format!(
                "opening {} (an instance started by an older dns-xdp has no samples)",
                path.display()
            )
        })?;
        Self::new(Map::from_map_data(data)?)
    }

    /// Every sample in the ring now, oldest first.
    pub fn read(&mut self) -> Vec<Sample> {
        let mut samples = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<QuerySample>() {
                let raw: QuerySample =
                    bytemuck::pod_read_unaligned(&item[..size_of::<QuerySample>()]);
                samples.push(Sample::decode(&raw, self.wall_offset_ns));
            }
        }
        samples
    }

    /// The ring's descriptor: readable when samples are waiting.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut time: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a timespec this function owns.
    unsafe { libc::clock_gettime(clock, &mut time) };
    i128::from(time.tv_sec) * 1_000_000_000 + i128::from(time.tv_nsec)
}

fn wall_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// One sampled query, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub time: SystemTime,
    pub source: IpAddr,
    /// The prefix that decided: the refusing level's, else the source address alone.
    pub prefix: IpNet,
    pub decision: Option<Decision>,
    /// The level that refused the query (0: the per-source one).
    pub level: Option<u8>,
    /// What XDP did: `pass`, `drop` or `tx` (a slipped reply).
    pub action: &'static str,
    pub protocol: &'static str,
    /// From the DNS header, when the sample has one.
    pub id: Option<u16>,
    pub opcode: Option<u8>,
    pub recursion_desired: Option<bool>,
    /// The name as read, in presentation form; a truncated one ends at its last whole
    /// label, one with a compression pointer before it.
    pub name: Option<String>,
    /// `complete`, `truncated` (longer than 255 bytes or than the message),
    /// `compressed` (a pointer where a label belongs, not followed), or `none`.
    pub name_status: &'static str,
    pub qtype: Option<String>,
    pub qclass: Option<String>,
}

impl Sample {
    /// Decodes a raw sample; `wall_offset_ns` turns its clock into the wall clock.
    pub fn decode(raw: &QuerySample, wall_offset_ns: i128) -> Self {
        let source = if raw.family == 6 {
            IpAddr::V6(Ipv6Addr::from(raw.source))
        } else {
            let [a, b, c, d, ..] = raw.source;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        };
        let prefix = IpNet::new(source, raw.prefix_len)
            .map(|net| net.trunc())
            .unwrap_or_else(|_| IpNet::from(source));
        let wall_ns = i128::from(raw.time_ns) + wall_offset_ns;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(wall_ns.max(0) as u64);
        let message = &raw.message[..usize::from(raw.message_len).min(raw.message.len())];
        let header = (message.len() >= DNS_HEADER_LEN).then_some(message);
        let name_end = usize::from(raw.name_end).min(message.len());
        let name = (name_end > DNS_HEADER_LEN || raw.name_status == NAME_COMPLETE)
            .then(|| decode_name(&message[DNS_HEADER_LEN.min(name_end)..name_end]))
            .flatten();
        let complete = raw.name_status == NAME_COMPLETE;
        Self {
            time,
            source,
            prefix,
            decision: Decision::from_index(raw.decision),
            level: (raw.level != NO_LEVEL).then_some(raw.level),
            action: match raw.action {
                2 => "pass",
                1 => "drop",
                3 => "tx",
                _ => "other",
            },
            protocol: if raw.protocol == 1 { "tcp" } else { "udp" },
            id: header.map(|header| u16::from_be_bytes([header[0], header[1]])),
            opcode: header.map(|header| (header[2] >> 3) & 0x0f),
            recursion_desired: header.map(|header| header[2] & 1 != 0),
            name,
            name_status: match raw.name_status {
                NAME_COMPLETE => "complete",
                NAME_TRUNCATED => "truncated",
                NAME_POINTER => "compressed",
                _ => "none",
            },
            qtype: complete.then(|| type_name(raw.qtype)),
            qclass: complete.then(|| class_name(raw.qclass)),
        }
    }

    /// Whether the query was refused (dropped, slipped, shed; passed only in dry-run).
    pub fn refused(&self) -> bool {
        self.decision.is_some_and(Decision::refused)
    }

    /// The zone the name most likely belongs to: its registrable domain (public suffix
    /// list), `in-addr.arpa` or `ip6.arpa` for reverse lookups, else the name itself.
    pub fn domain(&self) -> Option<String> {
        self.name.as_deref().map(registrable_domain)
    }

    /// The log line's object. Field names are stable (README, "Sampled queries").
    pub fn json(&self, iface: &str) -> Value {
        json!({
            "time": humantime::format_rfc3339_micros(self.time).to_string(),
            "iface": iface,
            "source": self.source.to_string(),
            "prefix": self.prefix.to_string(),
            "decision": self.decision.map_or("unknown", Decision::name),
            "level": self.level,
            "action": self.action,
            "protocol": self.protocol,
            "id": self.id,
            "opcode": self.opcode,
            "rd": self.recursion_desired,
            "name": self.name,
            "name_status": self.name_status,
            "qtype": self.qtype,
            "qclass": self.qclass,
            "domain": self.domain(),
            // A slipped reply is the query's own header and question with TC=1.
            "reply_rcode": (self.decision == Some(Decision::Slipped)).then_some("NOERROR"),
        })
    }
}

/// `labels` (a name's labels, without a root label, or with it when complete) in
/// presentation form, as hickory-proto reads them: no pointer can be among them (the
/// kernel's scan stops before one), so none is followed.
fn decode_name(labels: &[u8]) -> Option<String> {
    let mut wire = labels.to_vec();
    if wire.last() != Some(&0) {
        wire.push(0);
    }
    let name = Name::read(&mut BinDecoder::new(&wire)).ok()?;
    Some(name.to_ascii())
}

/// A type's mnemonic, or RFC 3597's `TYPEn`.
pub fn type_name(qtype: u16) -> String {
    match RecordType::from(qtype) {
        RecordType::Unknown(_) => format!("TYPE{qtype}"),
        known => known.to_string(),
    }
}

fn class_name(qclass: u16) -> String {
    match DNSClass::from(qclass) {
        DNSClass::Unknown(_) => format!("CLASS{qclass}"),
        known => known.to_string(),
    }
}

/// The registrable domain of `name` (presentation form).
pub fn registrable_domain(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    for reverse in ["in-addr.arpa", "ip6.arpa"] {
        if name == reverse || name.ends_with(&format!(".{reverse}")) {
            return reverse.to_owned();
        }
    }
    psl::domain_str(&name).map_or(name.clone(), str::to_owned)
}

/// Distinct keys counted per table; beyond it new ones count as `(other)`, so a flood
/// of random names costs bounded memory.
const MAX_KEYS: usize = 4096;

/// Counts by key, bounded.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    counts: HashMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, key: &str) {
        if let Some(count) = self.counts.get_mut(key) {
            *count += 1;
        } else if self.counts.len() < MAX_KEYS {
            self.counts.insert(key.to_owned(), 1);
        } else {
            *self.counts.entry("(other)".into()).or_default() += 1;
        }
    }

    /// The `n` largest, largest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut entries: Vec<_> = self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        entries.truncate(n);
        entries
    }
}

/// What one group of samples (a refused prefix, or the admitted queries) asked.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pub samples: u64,
    pub names: Tally,
    pub domains: Tally,
    pub qtypes: Tally,
    pub decisions: Tally,
}

impl Asked {
    fn add(&mut self, sample: &Sample) {
        self.samples += 1;
        self.names.add(sample.name.as_deref().unwrap_or("(none)"));
        self.domains
            .add(sample.domain().as_deref().unwrap_or("(none)"));
        self.qtypes.add(sample.qtype.as_deref().unwrap_or("(none)"));
        self.decisions
            .add(sample.decision.map_or("unknown", Decision::name));
    }

    fn json(&self, n: usize) -> Value {
        let top = |tally: &Tally| {
            tally
                .top(n)
                .into_iter()
                .map(|(key, count)| json!({"key": key, "samples": count}))
                .collect::<Vec<_>>()
        };
        json!({
            "samples": self.samples,
            "decisions": top(&self.decisions),
            "names": top(&self.names),
            "domains": top(&self.domains),
            "qtypes": top(&self.qtypes),
        })
    }

    fn line(tally: &Tally, n: usize) -> String {
        tally
            .top(n)
            .into_iter()
            .map(|(key, count)| format!("{key} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The top of the refused prefixes by samples, with what each asked, and what the
/// admitted queries asked.
#[derive(Clone, Debug, Default)]
pub struct QueryTop {
    refused: HashMap<IpNet, Asked>,
    admitted: Asked,
}

impl QueryTop {
    pub fn add(&mut self, sample: &Sample) {
        if !sample.refused() {
            self.admitted.add(sample);
        } else if let Some(asked) = self.refused.get_mut(&sample.prefix) {
            asked.add(sample);
        } else if self.refused.len() < MAX_KEYS {
            self.refused.entry(sample.prefix).or_default().add(sample);
        }
    }

    /// The `n` refused prefixes with most samples, most first.
    pub fn top(&self, n: usize) -> Vec<(IpNet, &Asked)> {
        let mut entries: Vec<_> = self
            .refused
            .iter()
            .map(|(net, asked)| (*net, asked))
            .collect();
        entries.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then_with(|| a.0.cmp(&b.0)));
        entries.truncate(n);
        entries
    }

    pub fn json(&self, iface: &str, window: Duration, n: usize) -> Value {
        json!({
            "iface": iface,
            "window_s": window.as_secs_f64(),
            "refused": self.top(n).into_iter().map(|(prefix, asked)| {
                let mut value = asked.json(5);
                value["prefix"] = json!(prefix.to_string());
                value
            }).collect::<Vec<_>>(),
            "admitted": self.admitted.json(5),
        })
    }

    pub fn text(&self, iface: &str, window: Duration, n: usize) -> String {
        let mut text = format!(
            "dns-xdp on {iface}: sampled queries of the last {:.0} s\n",
            window.as_secs_f64()
        );
        let top = self.top(n);
        if top.is_empty() {
            text.push_str("  no refused query sampled\n");
        }
        for (prefix, asked) in top {
            text.push_str(&format!(
                "  {prefix}  {} samples ({})\n    names   {}\n    domains {}\n    types   {}\n",
                asked.samples,
                Asked::line(&asked.decisions, 3),
                Asked::line(&asked.names, 3),
                Asked::line(&asked.domains, 3),
                Asked::line(&asked.qtypes, 3),
            ));
        }
        if self.admitted.samples != 0 {
            text.push_str(&format!(
                "  admitted  {} samples\n    domains {}\n    types   {}\n",
                self.admitted.samples,
                Asked::line(&self.admitted.domains, 3),
                Asked::line(&self.admitted.qtypes, 3),
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    fn raw(name: &[u8], status: u8, qtype: u16) -> QuerySample {
        let mut raw = QuerySample::zeroed();
        raw.family = 4;
        raw.source[..4].copy_from_slice(&[198, 18, 0, 7]);
        raw.prefix_len = 24;
        raw.decision = Decision::Limited as u8;
        raw.level = 1;
        raw.action = 1;
        raw.message[..2].copy_from_slice(&[0x12, 0x34]);
        raw.message[2] = 0x01;
        raw.message[DNS_HEADER_LEN..DNS_HEADER_LEN + name.len()].copy_from_slice(name);
        raw.name_end = (DNS_HEADER_LEN + name.len()) as u16;
        raw.message_len = raw.name_end + 4;
        raw.name_status = status;
        raw.qtype = qtype;
        raw.qclass = 1;
        raw
    }

    #[test]
    fn decodes_a_sample_into_the_documented_fields() {
        let sample = Sample::decode(&raw(b"\x03www\x07example\x03com\x00", NAME_COMPLETE, 28), 0);
        assert_eq!(sample.prefix.to_string(), "198.18.0.0/24");
        assert_eq!(sample.name.as_deref(), Some("www.example.com."));
        assert_eq!(sample.qtype.as_deref(), Some("AAAA"));
        assert_eq!(sample.domain().as_deref(), Some("example.com"));
        let line = sample.json("eth0");
        for (field, value) in [
            ("decision", json!("limited")),
            ("level", json!(1)),
            ("action", json!("drop")),
            ("id", json!(0x1234)),
            ("rd", json!(true)),
            ("qclass", json!("IN")),
            ("name_status", json!("complete")),
        ] {
            assert_eq!(line[field], value, "{field}");
        }
    }

    #[test]
    fn truncated_and_compressed_names_keep_their_whole_labels_only() {
        let sample = Sample::decode(&raw(b"\x01a\x01b", NAME_TRUNCATED, 0), 0);
        assert_eq!(sample.name.as_deref(), Some("a.b."));
        assert_eq!(
            (sample.name_status, sample.qtype.as_deref()),
            ("truncated", None)
        );
        let sample = Sample::decode(&raw(b"\x01a", NAME_POINTER, 0), 0);
        assert_eq!(
            (sample.name.as_deref(), sample.name_status),
            (Some("a."), "compressed")
        );
        assert_eq!(type_name(65280), "TYPE65280");
    }

    #[test]
    fn domains_group_random_subdomains_and_reverse_lookups() {
        assert_eq!(registrable_domain("x7f3.example.co.uk."), "example.co.uk");
        assert_eq!(registrable_domain("4.3.2.1.in-addr.arpa."), "in-addr.arpa");
        assert_eq!(registrable_domain("b.a.ip6.arpa."), "ip6.arpa");
        let mut top = QueryTop::default();
        for index in 0..3 {
            let name = format!("\x03r{index:02}\x07example\x03com\x00");
            top.add(&Sample::decode(&raw(name.as_bytes(), NAME_COMPLETE, 1), 0));
        }
        let [(prefix, asked)] = top.top(5)[..] else {
            panic!("one prefix");
        };
        assert_eq!(prefix.to_string(), "198.18.0.0/24");
        assert_eq!(asked.domains.top(1), [("example.com".to_owned(), 3)]);
    }

    #[test]
    fn tallies_stay_bounded() {
        let mut tally = Tally::default();
        for index in 0..MAX_KEYS + 10 {
            tally.add(&index.to_string());
        }
        assert_eq!(tally.counts.len(), MAX_KEYS + 1);
        assert_eq!(tally.top(1), [("(other)".to_owned(), 10)]);
    }
}
