//! Tracing and metrics setup shared by the binaries.
//!
//! Logs: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches to
//! JSON lines for log collectors.
//!
//! Metrics: one Prometheus recorder per process ([`metrics`]); the edge
//! serves it at `/metrics`, a worker on `METRICS_ADDR` ([`serve_metrics`]).
//! Every metric is named `natter_*`; `docs/operations.md` lists them.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").map(|v| v == "json").unwrap_or(false);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Latency buckets, in seconds: 100 µs to 10 s.
const SECONDS: &[f64] = &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Batch-size buckets, in commands.
const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES))
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// The process's metrics recorder, installed on first use (every later call,
/// from any edge or role in this process, shares it): render it to answer a
/// scrape.
pub fn metrics() -> PrometheusHandle {
    HANDLE.get_or_init(|| install(builder().build_recorder())).clone()
}

fn install(recorder: metrics_exporter_prometheus::PrometheusRecorder) -> PrometheusHandle {
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; natter's metrics are not recorded");
    }
    // Histograms are kept as buckets; upkeep drains what they gathered.
    let upkeep = handle.clone();
    let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        }
    });
    handle
}

/// Installs the recorder and serves it as Prometheus text at
/// `http://addr/metrics`, for the workers, which have no HTTP server of
/// their own (the exporter's listener). Call before anything is recorded.
pub async fn serve_metrics(addr: SocketAddr) -> std::io::Result<()> {
    if HANDLE.get().is_some() {
        return Err(std::io::Error::other("the metrics recorder is already installed"));
    }
    let (recorder, exporter) =
        builder().with_http_listener(addr).build().map_err(|e| std::io::Error::other(e.to_string()))?;
    let _ = HANDLE.set(install(recorder));
    tracing::info!(%addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics listener stopped");
        }
    });
    Ok(())
}
