//! The operator's own HTTP endpoint: `/healthz` (process alive), `/readyz` (leading, or a
//! healthy standby), `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// Shared with the HTTP handlers.
#[derive(Clone)]
pub struct Health {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Set once the process can do its job: leading with the controller started, or a
    /// standby that reaches the API server. Cleared when the lease is lost.
    pub ready: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(h): State<Health>) -> String {
    h.metrics.render()
}

/// The router (tests call it without a socket).
pub fn router(h: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(h)
}

/// Binds `addr` (an error here is fatal for the caller: without the endpoint the probes
/// would fail and the pod would be restarted anyway), then serves until the task is dropped.
pub async fn bind(
    addr: SocketAddr,
    h: Health,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health and metrics endpoint listening");
    Ok(async move { axum::serve(listener, router(h)).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(h: &Health, path: &str) -> (StatusCode, String) {
        let resp = router(h.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let h = Health {
            metrics: Metrics::new().unwrap(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(get(&h, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&h, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        h.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&h, "/readyz").await.0, StatusCode::OK);
        h.metrics.reconciles.inc();
        h.metrics.errors.with_label_values(&["kube"]).inc();
        let (_, text) = get(&h, "/metrics").await;
        assert!(text.contains("qpq_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("qpq_operator_reconcile_errors_total{kind=\"kube\"} 1"),
            "{text}"
        );
    }
}
