//! Counter output: `name=value` text for people, one JSON object per line for scripts.

use dns_xdp_common::{Counter, Counters};
use serde_json::{Map, Value};

/// Which report a line is: periodic, or the last one before exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Stats,
    Final,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Stats => "stats",
            Event::Final => "final",
        }
    }
}

/// One JSON object: `{"event":..,"iface":..,"elapsed_s":..,"counters":{name: value..}}`.
pub fn json_line(event: Event, iface: &str, elapsed_s: f64, counters: &Counters) -> String {
    let counters: Map<String, Value> = Counter::ALL
        .iter()
        .map(|&counter| (counter.name().to_owned(), counters.get(counter).into()))
        .collect();
    serde_json::json!({
        "event": event.name(),
        "iface": iface,
        "elapsed_s": (elapsed_s * 1000.0).round() / 1000.0,
        "counters": counters,
    })
    .to_string()
}

/// One human line: `[  12.0s] eth0 stats: packets=120 query_udp4=10 ...`.
pub fn text_line(event: Event, iface: &str, elapsed_s: f64, counters: &Counters) -> String {
    let mut line = format!("[{elapsed_s:7.1}s] {iface} {}:", event.name());
    for &counter in Counter::ALL {
        line.push_str(&format!(" {}={}", counter.name(), counters.get(counter)));
    }
    line
}

/// Parses a `counters` object of a JSON line back into `Counters` (for tests and tools).
pub fn counters_from_json(line: &Value) -> Option<Counters> {
    let object = line.get("counters")?.as_object()?;
    let mut counters = Counters::default();
    for &counter in Counter::ALL {
        counters.values[counter as usize] = object.get(counter.name())?.as_u64()?;
    }
    Some(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_round_trips_every_counter() {
        let mut counters = Counters::default();
        for (index, value) in counters.values.iter_mut().enumerate() {
            *value = index as u64 * 1000 + 7;
        }
        let line = json_line(Event::Final, "veth0", 1.23456, &counters);
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["event"], "final");
        assert_eq!(parsed["iface"], "veth0");
        assert_eq!(parsed["elapsed_s"], 1.235);
        assert_eq!(counters_from_json(&parsed), Some(counters));
    }

    #[test]
    fn text_line_names_every_counter() {
        let line = text_line(Event::Stats, "eth0", 2.0, &Counters::default());
        assert!(line.starts_with("[    2.0s] eth0 stats: packets=0"));
        for counter in Counter::ALL {
            assert!(line.contains(&format!(" {}=0", counter.name())), "{line}");
        }
    }
}
