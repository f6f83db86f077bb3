//! Prometheus metrics, read straight from the maps at each scrape.

use std::{
    future::Future as _,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use dns_xdp_common::{
    Counter as Index, EgressCounter,
    samples::{COUNTED_QTYPES, Decision, QTYPE_OTHER},
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::{
    conntrack,
    maps::{Maps, top_refused},
    samples::type_name,
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
/// The sample counters, exported as `dns_xdp_samples_total{outcome}`.
const SAMPLE_OUTCOMES: [(Index, &str); 3] = [
    (Index::SamplesTaken, "taken"),
    (Index::SamplesLost, "lost"),
    (Index::SamplesCapped, "capped"),
];

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
        if index == Index::SourcesCreated
            || index == Index::ProvedCookie
            || SAMPLE_OUTCOMES.iter().any(|(i, _)| *i == index)
        {
            continue; // their own series below
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

    let samples = counter_family(
        &mut registry,
        "samples",
        "Queries due to be sampled, by outcome: taken into the ring, lost (ring full: no \
         reader, or a slow one), capped (over --sample-cap)",
    );
    for (index, outcome) in SAMPLE_OUTCOMES {
        samples
            .get_or_create(&labels(&[("iface", iface), ("outcome", outcome)]))
            .inc_by(counters.get(index));
    }
    let sampled = counter_family(
        &mut registry,
        "sampled_queries",
        "Sampled queries by decision and question type (one in --sample per decision: \
         multiply by it for an estimate of all queries)",
    );
    let types = maps.sampled_types()?;
    for (decision, counts) in Decision::ALL.iter().zip(&types.counts) {
        for (slot, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let qtype = match COUNTED_QTYPES.get(slot) {
                Some(&qtype) => type_name(qtype),
                None if slot == QTYPE_OTHER => "other".into(),
                None => "none".into(),
            };
            sampled
                .get_or_create(&labels(&[
                    ("iface", iface),
                    ("decision", decision.name()),
                    ("qtype", &qtype),
                ]))
                .inc_by(count);
        }
    }

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

    let proofs = counter_family(
        &mut registry,
        "proofs",
        "Proofs of a source's address recorded (a proof is refreshed at most once per \
         half --proof-ttl), by how: a TCP handshake completed, a valid DNS cookie",
    );
    for (via, value) in [
        ("tcp", egress.get(EgressCounter::ProvedTcp)),
        ("cookie", counters.get(Index::ProvedCookie)),
    ] {
        proofs
            .get_or_create(&labels(&[("iface", iface), ("via", via)]))
            .inc_by(value);
    }
    let proven = gauge_family(
        &mut registry,
        "proven_sources",
        "Sources (at the per-source prefix) proven now: served first over the budget",
    );
    proven
        .get_or_create(&labels(&[("iface", iface)]))
        .set(maps.proven_sources()? as i64);

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
    // A scrape walks the source table: on a blocking thread, not on the loop that
    // handles signals and reports.
    let rendered =
        tokio::task::spawn_blocking(move || render(&scrape.maps, &scrape.iface, scrape.top))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("the scrape failed: {error}")));
    match rendered {
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

/// Connections the metrics server serves at once; one more is closed when accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may send nothing before it is closed (a client that opens
/// connections and sends no request cannot hold the server's slots).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    let listener = Capped {
        listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    axum::serve(listener, app).into_future()
}

/// A listener that serves at most `MAX_CONNECTIONS` at once.
struct Capped {
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.listener.accept().await {
                // Over the cap, the connection is closed at once: excess connections do
                // not queue up ahead of the next scrape.
                Ok((stream, addr)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let guarded = Guarded {
                            stream,
                            _slot: slot,
                            idle: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
                        };
                        return (guarded, addr);
                    }
                    Err(_) => drop(stream),
                },
                // Out of descriptors and the like: wait, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection holding one of the server's slots, closed when it has sent nothing for
/// `READ_TIMEOUT`.
struct Guarded {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.idle
                    .as_mut()
                    .reset(tokio::time::Instant::now() + READ_TIMEOUT);
                Poll::Ready(result)
            }
            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "idle metrics connection"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
