//! Output: `name=value` text and tables for people, one JSON object per line for scripts.

use dns_xdp_common::{Counter, Counters, EgressCounter, EgressCounters};
use serde_json::{Map, Value, json};

use std::time::Duration;

use crate::{
    conntrack::{self, Headroom},
    maps::{ListReport, Maps, SourceReport},
    status::headroom_json,
};

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

/// One report: the counters, the sources refused most, and the list entries' hits.
pub struct Report<'a> {
    pub event: Event,
    pub iface: &'a str,
    pub elapsed_s: f64,
    pub counters: Counters,
    pub egress: EgressCounters,
    /// Connection-tracking table use in this network namespace, if conntrack is loaded.
    pub conntrack: Option<Headroom>,
    pub top: Vec<SourceReport>,
    pub lists: Vec<ListReport>,
    /// Sources (prefixes) proven now (`Maps::proven_sources`).
    pub proven_sources: u64,
    /// Per-second rates of the counters since the previous report, when watching.
    pub rates: Option<Vec<(&'static str, f64)>>,
    /// Only the top sources (the `top` command).
    pub top_only: bool,
}

/// Per-second rate of every counter between two readings `elapsed` apart.
pub fn rates(now: &Counters, before: &Counters, elapsed: Duration) -> Vec<(&'static str, f64)> {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Counter::ALL
        .iter()
        .map(|&counter| {
            let delta = now.get(counter).saturating_sub(before.get(counter));
            (
                counter.name(),
                (delta as f64 / seconds * 10.0).round() / 10.0,
            )
        })
        .collect()
}

impl<'a> Report<'a> {
    /// Reads everything a report shows from the maps.
    pub fn read(
        maps: &Maps,
        event: Event,
        iface: &'a str,
        elapsed: Duration,
        top: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            event,
            iface,
            elapsed_s: elapsed.as_secs_f64(),
            counters: maps.counters()?,
            egress: maps.egress_counters()?,
            conntrack: conntrack::headroom(),
            top: if top > 0 {
                maps.top_sources(top)?
            } else {
                Vec::new()
            },
            lists: maps.lists()?,
            proven_sources: maps.proven_sources()?,
            rates: None,
            top_only: false,
        })
    }

    /// This report reduced to its top sources.
    pub fn top_only(self) -> Self {
        Self {
            top_only: true,
            ..self
        }
    }

    /// `{"event":..,"iface":..,"elapsed_s":..,"counters":{..},"top":[..],"lists":[..]}`.
    pub fn json(&self) -> String {
        let counters: Map<String, Value> = Counter::ALL
            .iter()
            .map(|&counter| (counter.name().to_owned(), self.counters.get(counter).into()))
            .collect();
        let egress: Map<String, Value> = EgressCounter::ALL
            .iter()
            .map(|&counter| (counter.name().to_owned(), self.egress.get(counter).into()))
            .collect();
        let top: Vec<Value> = self
            .top
            .iter()
            .map(|source| {
                json!({
                    "prefix": source.prefix.to_string(),
                    "level": source.level,
                    "tcp": source.tcp,
                    "bucket": source.bucket,
                    "passed": source.passed,
                    "dropped": source.dropped,
                    "would_drop": source.would_drop,
                })
            })
            .collect();
        let lists: Vec<Value> = self
            .lists
            .iter()
            .map(|entry| {
                json!({
                    "prefix": entry.prefix.to_string(),
                    "action": if entry.allow { "allow" } else { "deny" },
                    "hits": entry.hits,
                })
            })
            .collect();
        if self.top_only {
            return json!({"iface": self.iface, "top": top, "proven": self.proven_json()})
                .to_string();
        }
        let mut report = json!({
            "event": self.event.name(),
            "iface": self.iface,
            "elapsed_s": (self.elapsed_s * 1000.0).round() / 1000.0,
            "counters": counters,
            "egress": egress,
            "conntrack": headroom_json(self.conntrack),
            "top": top,
            "lists": lists,
            "proven_sources": self.proven_sources,
        });
        if let Some(rates) = &self.rates {
            report["rates_per_s"] = rates
                .iter()
                .map(|(name, rate)| ((*name).to_owned(), json!(rate)))
                .collect::<Map<_, _>>()
                .into();
        }
        report.to_string()
    }

    /// A counters line (`[  12.0s] eth0 stats: packets=120 ...`), then the tables that
    /// have rows.
    pub fn text(&self) -> String {
        let mut text = format!(
            "[{:7.1}s] {} {}:",
            self.elapsed_s,
            self.iface,
            self.event.name()
        );
        for &counter in Counter::ALL {
            text.push_str(&format!(
                " {}={}",
                counter.name(),
                self.counters.get(counter)
            ));
        }
        text.push_str(&format!(
            " proved_tcp={} proven_sources={}",
            self.egress.get(EgressCounter::ProvedTcp),
            self.proven_sources
        ));
        if !self.top.is_empty() {
            text.push_str(&format!(
                "\n  {:<43} {:>12} {:>12} {:>12}",
                "top sources by refused queries", "dropped", "would_drop", "passed"
            ));
            for source in &self.top {
                text.push_str(&format!(
                    "\n  {:<43} {:>12} {:>12} {:>12}",
                    source.prefix.to_string(),
                    source.dropped,
                    source.would_drop,
                    source.passed
                ));
            }
        }
        if !self.lists.is_empty() && !self.top_only {
            text.push_str(&format!(
                "\n  {:<43} {:>12} {:>12}",
                "list entry", "action", "hits"
            ));
            for entry in &self.lists {
                let action = if entry.allow { "allow" } else { "deny" };
                text.push_str(&format!(
                    "\n  {:<43} {action:>12} {:>12}",
                    entry.prefix.to_string(),
                    entry.hits
                ));
            }
        }
        text
    }
}

impl Report<'_> {
    /// Proven sources and how the server budget served them: what `top` shows beside
    /// the sources refused most.
    fn proven_json(&self) -> Value {
        let count = |counter| self.counters.get(counter);
        json!({
            "sources": self.proven_sources,
            "proved_tcp": self.egress.get(EgressCounter::ProvedTcp),
            "proved_cookie": count(Counter::ProvedCookie),
            "budget_served_proven": count(Counter::BudgetServedProven),
            "budget_served_unproven": count(Counter::BudgetServedUnproven),
            "budget_shed_proven": count(Counter::BudgetShedProven),
            "budget_shed_unproven": count(Counter::BudgetShedHeavy) + count(Counter::BudgetShedLight),
            "budget_slipped": count(Counter::BudgetSlipped),
        })
    }
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

    fn report(event: Event) -> Report<'static> {
        let mut counters = Counters::default();
        for (index, value) in counters.values.iter_mut().enumerate() {
            *value = index as u64 * 1000 + 7;
        }
        Report {
            event,
            iface: "veth0",
            elapsed_s: 1.23456,
            counters,
            egress: EgressCounters::default(),
            conntrack: Some(Headroom {
                count: 3,
                max: 65536,
            }),
            top: vec![SourceReport {
                prefix: "198.18.0.0/24".parse().unwrap(),
                level: 1,
                tcp: false,
                bucket: "udp",
                passed: 20,
                dropped: 80,
                would_drop: 0,
            }],
            lists: vec![ListReport {
                prefix: "2001:db8::/32".parse().unwrap(),
                allow: false,
                hits: 3,
            }],
            proven_sources: 5,
            rates: None,
            top_only: false,
        }
    }

    #[test]
    fn json_line_round_trips_every_counter() {
        let report = report(Event::Final);
        let parsed: Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(parsed["event"], "final");
        assert_eq!(parsed["iface"], "veth0");
        assert_eq!(parsed["elapsed_s"], 1.235);
        assert_eq!(counters_from_json(&parsed), Some(report.counters));
        assert_eq!(parsed["top"][0]["prefix"], "198.18.0.0/24");
        assert_eq!(parsed["top"][0]["dropped"], 80);
        assert_eq!(parsed["lists"][0]["action"], "deny");
        assert_eq!(parsed["lists"][0]["hits"], 3);
        assert_eq!(parsed["conntrack"]["max"], 65536);
        assert_eq!(parsed["egress"]["response_udp4_bytes"], 0);
    }

    #[test]
    fn text_names_every_counter_and_shows_the_tables() {
        let text = report(Event::Stats).text();
        assert!(
            text.starts_with("[    1.2s] veth0 stats: packets=7"),
            "{text}"
        );
        for counter in Counter::ALL {
            assert!(text.contains(&format!(" {}=", counter.name())), "{text}");
        }
        assert!(text.contains("198.18.0.0/24"), "{text}");
        assert!(text.contains("2001:db8::/32"), "{text}");
    }
}
