//! Metrics (Prometheus text format), health and readiness, served on `server.listen`:
//! `/metrics`, `/healthz` (the process is alive), `/readyz` (streaming and publishing, not
//! stuck). Metric names are the interface dashboards and alerts rely on (SPEC section 5);
//! labels are low-cardinality (table, op, error kind), never an LSN or an event id.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::event::Position;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableOp {
    pub table: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Table {
    pub table: String,
}

pub struct Metrics {
    pub events_published: Family<TableOp, Counter>,
    pub markers_published: Family<Kind, Counter>,
    pub bytes_published: Counter,
    pub publish_ack_seconds: Histogram,
    pub acks_in_flight: Gauge,
    pub replication_lag_bytes: Gauge,
    pub replication_lag_seconds: Gauge<f64, AtomicU64>,
    pub slot_retained_wal_bytes: Gauge,
    pub confirmed_lsn: Gauge,
    pub errors: Family<Kind, Counter>,
    pub restarts: Counter,
    pub snapshot_rows: Family<Table, Counter>,
    /// The size of the newest checkpoint, and of the newest one the witness quorum cosigned.
    pub checkpoint_size: Gauge,
    pub witnessed_size: Gauge,
    pub witness_quorum_missed: Counter,
    registry: Registry,
}

impl Metrics {
    /// Long but flat: one `register` per metric, each with its name and help text (SPEC
    /// section 5's table), then every labelled family's known values exported at 0.
    fn new() -> Self {
        let m = Metrics {
            events_published: Family::default(),
            markers_published: Family::default(),
            bytes_published: Counter::default(),
            publish_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            acks_in_flight: Gauge::default(),
            replication_lag_bytes: Gauge::default(),
            replication_lag_seconds: Gauge::default(),
            slot_retained_wal_bytes: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            errors: Family::default(),
            restarts: Counter::default(),
            snapshot_rows: Family::default(),
            checkpoint_size: Gauge::default(),
            witnessed_size: Gauge::default(),
            witness_quorum_missed: Counter::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        r.register(
            "walguard_events_published",
            "Row events published and acknowledged, by table and op",
            m.events_published.clone(),
        );
        r.register(
            "walguard_markers_published",
            "walguard's own markers published and acknowledged (watermarks, snapshot progress, resync records), by kind",
            m.markers_published.clone(),
        );
        r.register(
            "walguard_published_bytes",
            "Payload bytes published and acknowledged",
            m.bytes_published.clone(),
        );
        r.register(
            "walguard_publish_ack_seconds",
            "Time from publish to JetStream PubAck",
            m.publish_ack_seconds.clone(),
        );
        r.register(
            "walguard_acks_in_flight",
            "Publishes awaiting their PubAck",
            m.acks_in_flight.clone(),
        );
        r.register(
            "walguard_replication_lag_bytes",
            "WAL received from the server but not yet confirmed",
            m.replication_lag_bytes.clone(),
        );
        r.register(
            "walguard_replication_lag_seconds",
            "Now minus the commit time of the newest acknowledged change",
            m.replication_lag_seconds.clone(),
        );
        r.register(
            "walguard_slot_retained_wal_bytes",
            "WAL the slot keeps on the server",
            m.slot_retained_wal_bytes.clone(),
        );
        r.register(
            "walguard_confirmed_lsn",
            "The LSN last confirmed to PostgreSQL, as a number",
            m.confirmed_lsn.clone(),
        );
        r.register("walguard_errors", "Errors by kind", m.errors.clone());
        r.register(
            "walguard_restarts",
            "Sessions restarted after an error",
            m.restarts.clone(),
        );
        r.register(
            "walguard_snapshot_rows",
            "Snapshot rows read, by table",
            m.snapshot_rows.clone(),
        );
        r.register(
            "walguard_checkpoint_size",
            "The tree size of the newest checkpoint published",
            m.checkpoint_size.clone(),
        );
        r.register(
            "walguard_witnessed_size",
            "The tree size of the newest checkpoint the witness quorum cosigned",
            m.witnessed_size.clone(),
        );
        r.register(
            "walguard_witness_quorum_missed",
            "Checkpoints published without the witness quorum's cosignatures",
            m.witness_quorum_missed.clone(),
        );
        for kind in crate::error::ERROR_KINDS {
            let _ = m.errors.get_or_create(&Kind { kind: kind.to_owned() });
        }
        for kind in MARKER_KINDS {
            let _ = m.markers_published.get_or_create(&Kind { kind: kind.to_owned() });
        }
        Metrics { registry: r, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&Kind { kind: kind.to_owned() }).inc();
    }
}

/// The `kind` label of `walguard_markers_published_total`: `Op::as_str` of each marker.
const MARKER_KINDS: [&str; 5] = ["watermark", "resync", "snapshot_progress", "schema", "checkpoint"];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A publish that has waited this long for its ack means walguard is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(30);

/// What `/readyz` answers from.
pub struct Health {
    streaming: AtomicBool,
    reason: Mutex<String>,
    /// When the oldest publish still waiting for its ack was sent.
    oldest_unacked: Mutex<Option<Instant>>,
    /// An event that cannot go out (SPEC G3), and where it stands: not ready until an event
    /// at or past it is published, across the sessions that retry it.
    blocked: Mutex<Option<(String, Option<Position>)>>,
    /// With `audit.require_witness`: why the slot is held back (no witness quorum).
    unwitnessed: Mutex<Option<String>>,
}

static HEALTH: LazyLock<Health> = LazyLock::new(|| Health {
    streaming: AtomicBool::new(false),
    reason: Mutex::new("starting".into()),
    oldest_unacked: Mutex::new(None),
    blocked: Mutex::new(None),
    unwitnessed: Mutex::new(None),
});

pub fn health() -> &'static Health {
    &HEALTH
}

impl Health {
    pub fn streaming(&self) {
        self.streaming.store(true, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = String::new();
    }

    pub fn not_streaming(&self, reason: impl Into<String>) {
        self.streaming.store(false, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.into();
        *self.oldest_unacked.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Progress is blocked for `reason` (which names the table, the size and the limit), at
    /// `at` when the blocking event was built.
    pub fn blocked(&self, reason: impl Into<String>, at: Option<Position>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = Some((reason.into(), at));
    }

    /// `Some` while blocked: where, when known.
    pub fn blocked_at(&self) -> Option<Option<Position>> {
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, at)| *at)
    }

    pub fn unblocked(&self) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn oldest_unacked(&self, since: Option<Instant>) {
        *self.oldest_unacked.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }

    /// `Some(reason)`: the newest checkpoint lacks its witness quorum and the slot is held
    /// back for it; `None`: the quorum cosigned it.
    pub fn witnessed(&self, reason: Option<String>) {
        *self.unwitnessed.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    pub fn ready(&self) -> Result<(), String> {
        if let Some((reason, _)) = &*self.blocked.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(format!("blocked: {reason}"));
        }
        if let Some(reason) = &*self.unwitnessed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(format!("not witnessed: {reason}"));
        }
        if !self.streaming.load(Ordering::SeqCst) {
            let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(if reason.is_empty() {
                "not streaming".into()
            } else {
                reason
            });
        }
        if let Some(since) = *self.oldest_unacked.lock().unwrap_or_else(|p| p.into_inner()) {
            if since.elapsed() > STUCK_AFTER {
                return Err(format!(
                    "a publish has waited {}s for its ack",
                    since.elapsed().as_secs()
                ));
            }
        }
        Ok(())
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match health().ready() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

/// Serves the endpoints until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(handle);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::draft::Op;

    #[test]
    fn metric_names_are_the_documented_ones() {
        let m = metrics();
        m.events_published
            .get_or_create(&TableOp {
                table: "public.t".into(),
                op: "insert".into(),
            })
            .inc();
        m.error("nats");
        m.publish_ack_seconds.observe(0.002);
        let text = m.encode();
        for name in [
            "walguard_events_published_total{table=\"public.t\",op=\"insert\"} 1",
            "walguard_publish_ack_seconds_bucket",
            "walguard_replication_lag_bytes",
            "walguard_slot_retained_wal_bytes",
            "walguard_confirmed_lsn",
            "walguard_errors_total{kind=\"nats\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn readiness_follows_streaming_and_stuck_acks() {
        let h = Health {
            streaming: AtomicBool::new(false),
            reason: Mutex::new("starting".into()),
            oldest_unacked: Mutex::new(None),
            blocked: Mutex::new(None),
            unwitnessed: Mutex::new(None),
        };
        assert_eq!(h.ready(), Err("starting".into()));
        h.streaming();
        assert_eq!(h.ready(), Ok(()));
        h.oldest_unacked(Instant::now().checked_sub(Duration::from_secs(60)));
        assert!(h.ready().unwrap_err().contains("waited"));
        h.not_streaming("nats: connection refused");
        assert_eq!(h.ready(), Err("nats: connection refused".into()));
        // Blocked at an event: not ready even while a new session streams, until it is sent.
        let at = Position {
            lsn: crate::lsn::Lsn(0x100),
            idx: 2,
        };
        h.blocked(
            "event for table public.t is 9000 bytes, over max_payload of 4096",
            Some(at),
        );
        h.streaming();
        assert!(h.ready().unwrap_err().contains("public.t is 9000 bytes"));
        assert_eq!(h.blocked_at(), Some(Some(at)));
        h.unblocked();
        assert_eq!(h.ready(), Ok(()));
    }

    #[test]
    fn every_error_kind_and_no_marker_table_is_exported_from_start_up() {
        let text = metrics().encode();
        for kind in crate::error::ERROR_KINDS {
            assert!(
                text.contains(&format!("walguard_errors_total{{kind=\"{kind}\"}}")),
                "{kind} missing from:\n{text}"
            );
        }
        for op in [
            Op::Watermark,
            Op::Resync,
            Op::SnapshotProgress,
            Op::Schema,
            Op::Checkpoint,
        ] {
            assert!(op.is_marker() && MARKER_KINDS.contains(&op.as_str()));
            let line = format!("walguard_markers_published_total{{kind=\"{}\"}}", op.as_str());
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Snapshot] {
            assert!(!op.is_marker());
        }
    }
}
