//! Prometheus metrics, read straight from the maps at each scrape.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use dns_xdp_common::{Counter as Index, EgressCounter};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    conntrack,
    maps::{Maps, top_refused},
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The metrics of the instance on `iface`, in the Prometheus text format. At most
/// `top` sources are named, so label cardinality stays bounded.
pub fn render(maps: &Maps, iface: &str, top: usize) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("dns_xdp");
    let counter_family = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge_family = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };

    let counters = maps.counters()?;
    let packets = counter_family(&mut registry, "packets", "Frames seen by XDP, by class");
    let decisions = counter_family(
        &mut registry,
        "query_decisions",
        "Decisions on queries, by reason",
    );
    for &index in Index::ALL {
        let value = counters.get(index);
        if index == Index::SourcesCreated {
            continue; // its own series below
        } else if index == Index::Packets {
            packets
                .get_or_create(&labels(&[("iface", iface), ("class", "all")]))
                .inc_by(value);
        } else if index.is_class() {
            packets
                .get_or_create(&labels(&[("iface", iface), ("class", index.name())]))
                .inc_by(value);
        } else {
            decisions
                .get_or_create(&labels(&[("iface", iface), ("reason", index.name())]))
                .inc_by(value);
        }
    }

    let created = counter_family(
        &mut registry,
        "sources_created",
        "Source prefixes put into the table",
    );
    created
        .get_or_create(&labels(&[("iface", iface)]))
        .inc_by(counters.get(Index::SourcesCreated));

    let egress = maps.egress_counters()?;
    let egress_packets = counter_family(
        &mut registry,
        "egress_packets",
        "DNS leaving the interface (TC)",
    );
    let egress_bytes = counter_family(
        &mut registry,
        "egress_bytes",
        "Bytes of DNS leaving the interface (TC)",
    );
    for &index in EgressCounter::ALL {
        // Names are <direction>_<proto><family>_<unit>, e.g. response_udp4_packets.
        let parts: Vec<&str> = index.name().split('_').collect();
        let [direction, flow, unit] = parts[..] else {
            continue;
        };
        let (proto, family) = flow.split_at(3);
        let family_label = if family == "4" { "ipv4" } else { "ipv6" };
        let series = labels(&[
            ("iface", iface),
            ("direction", direction),
            ("proto", proto),
            ("family", family_label),
        ]);
        let target = if unit == "bytes" {
            &egress_bytes
        } else {
            &egress_packets
        };
        target.get_or_create(&series).inc_by(egress.get(index));
    }

    let sources = maps.sources()?;
    let table = gauge_family(
        &mut registry,
        "source_table_entries",
        "Source prefixes tracked",
    );
    table
        .get_or_create(&labels(&[("iface", iface)]))
        .set(sources.len() as i64);
    let capacity = gauge_family(
        &mut registry,
        "source_table_capacity",
        "Capacity of the source table",
    );
    capacity
        .get_or_create(&labels(&[("iface", iface)]))
        .set(i64::from(maps.table_size()?));

    let refused = counter_family(
        &mut registry,
        "top_source_refused",
        "Queries refused, for the sources refused most",
    );
    let passed = counter_family(
        &mut registry,
        "top_source_passed",
        "Queries passed, for the sources refused most",
    );
    for source in top_refused(sources, top) {
        let prefix = source.prefix.to_string();
        let level = source.level.to_string();
        let transport = source.bucket;
        let series = labels(&[
            ("iface", iface),
            ("prefix", &prefix),
            ("level", &level),
            ("transport", transport),
        ]);
        refused.get_or_create(&series).inc_by(source.refused());
        passed.get_or_create(&series).inc_by(source.passed);
    }

    let hits = counter_family(
        &mut registry,
        "list_hits",
        "Queries that matched an allow/deny entry",
    );
    for entry in maps.lists()? {
        let prefix = entry.prefix.to_string();
        let action = if entry.allow { "allow" } else { "deny" };
        hits.get_or_create(&labels(&[
            ("iface", iface),
            ("prefix", &prefix),
            ("action", action),
        ]))
        .inc_by(entry.hits);
    }

    if let Some(headroom) = conntrack::headroom() {
        let entries = gauge_family(&mut registry, "conntrack_entries", "nf_conntrack_count");
        entries
            .get_or_create(&labels(&[]))
            .set(i64::try_from(headroom.count)?);
        let max = gauge_family(&mut registry, "conntrack_max", "nf_conntrack_max");
        max.get_or_create(&labels(&[]))
            .set(i64::try_from(headroom.max)?);
    }

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

struct Scrape {
    maps: Maps,
    iface: String,
    top: usize,
}

async fn metrics(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    match render(&scrape.maps, &scrape.iface, scrape.top) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("{error:#}\n"),
        )
            .into_response(),
    }
}

/// Binds the metrics address: done before attaching, so a taken or missing address
/// fails the start with nothing attached.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics address {addr} (--metrics-addr; `off` to disable)")
    })
}

/// The metrics server on `listener`, reading `maps`; to be spawned.
pub fn serve(
    listener: tokio::net::TcpListener,
    maps: Maps,
    iface: String,
    top: usize,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let state = Arc::new(Scrape { maps, iface, top });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app).into_future()
}
