//! `GET /metrics` on a listener of its own, for the hub and the agent alike: a hyper HTTP/1
//! server that answers that one path with the text a caller-supplied function renders, 404 for
//! any other path and 405 for any other method. Each connection is bounded in time (request
//! head within 5 s, whole connection within 30 s); accept errors back off instead of spinning.
//! Plain HTTP without a certificate: bind it to 127.0.0.1 or a management network.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The OpenMetrics text content type (what prometheus-client's text encoder writes).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the metrics page: the text, or a message for the log when a gauge could not be read.
pub type Render =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// How long a connection may take to send its request head, and to be served.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

fn reply(status: StatusCode, body: String, kind: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn answer(render: &Render, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n".into(),
            PLAIN,
        );
    }
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics\n".into(),
            PLAIN,
        );
    }
    match render().await {
        Ok(text) => reply(StatusCode::OK, text, OPENMETRICS),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be read");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metrics could not be read; the error is in the log\n".into(),
                PLAIN,
            )
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, render: Render) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&render, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}
