//! The mock agent: JSON replies and SSE token streams carrying an `x-agent-outcome` header,
//! with knobs that make it misbehave (errors, latency, escalations, verbosity, a slow first
//! token) for a demo of a bad canary. `POST .../chat/completions` speaks OpenAI's protocol
//! (`openai`); every other path answers the demo's own small JSON or SSE.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use super::spec::{AgentSpec, ChannelBody};

/// Serves a mock agent on `listener` forever (HTTP/1.1 and h2c).
pub async fn serve_agent(listener: TcpListener, spec: AgentSpec) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    let spec = Arc::new(spec);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (spec, builder) = (Arc::clone(&spec), Arc::clone(&builder));
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let spec = Arc::clone(&spec);
                async move { Ok::<_, Infallible>(agent_reply(&spec, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// `cohort demo-agent`: one mock agent on `address` until SIGTERM/SIGINT.
pub async fn run_agent(address: SocketAddr, spec: AgentSpec) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(agent = %spec.name, address = %listener.local_addr()?, error_rate = spec.error_rate,
        latency_ms = spec.latency.as_millis() as u64, escalation_rate = ?spec.escalation_rate, "demo agent listening");
    tokio::select! {
        _ = serve_agent(listener, spec) => {}
        _ = super::stop_signal() => tracing::info!("demo agent stopping"),
    }
    Ok(())
}

const TOKENS: &[&str] = &[
    "Thanks ",
    "for ",
    "reaching ",
    "out. ",
    "I ",
    "have ",
    "reset ",
    "your ",
    "password; ",
    "check ",
    "your ",
    "inbox.",
];

async fn agent_reply(spec: &AgentSpec, req: Request<Incoming>) -> Response<ChannelBody> {
    if req.uri().path() == "/healthz" {
        // For container and pod probes: healthy whatever the knobs say.
        let (tx, body) = ChannelBody::new(1);
        let _ = tx.try_send(Frame::data(Bytes::from_static(b"ok\n")));
        return Response::new(body);
    }
    if req.method() == http::Method::POST && req.uri().path().ends_with("/chat/completions") {
        return super::openai::serve(spec, req).await;
    }
    let think = spec.think_time();
    if !think.is_zero() {
        tokio::time::sleep(think).await;
    }
    let failed = spec.fails();
    let outcome = if failed { "error" } else { spec.outcome() };
    let wants_stream = req.uri().path().ends_with("/stream")
        || req
            .headers()
            .get(header::ACCEPT)
            .is_some_and(|a| a.as_bytes().starts_with(b"text/event-stream"));
    let cohort = req
        .headers()
        .get("x-cohort")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let (tx, body) = ChannelBody::new(4);
    let status = if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let mut resp = spec.head(status, outcome, body);
    let h = resp.headers_mut();
    if wants_stream && !failed {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let (delay, name) = (spec.token_delay, spec.name.clone());
        let first = spec.first_token_delay;
        tokio::spawn(async move {
            if !first.is_zero() {
                tokio::time::sleep(first).await;
            }
            for t in TOKENS {
                let ev = format!("data: {{\"agent\":\"{name}\",\"token\":\"{t}\"}}\n\n");
                if tx.send(Frame::data(Bytes::from(ev))).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
            let _ = tx
                .send(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
                .await;
        });
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let json = if failed {
            serde_json::json!({"agent": spec.name, "cohort_header": cohort, "error": "the agent failed (demo error rate)"})
        } else {
            serde_json::json!({
                "agent": spec.name,
                "cohort_header": cohort,
                "reply": TOKENS.concat(),
                "outcome": outcome,
            })
        };
        let _ = tx.try_send(Frame::data(Bytes::from(format!("{json}\n"))));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shares(spec: &AgentSpec, n: usize) -> [usize; 3] {
        let mut c = [0; 3];
        for _ in 0..n {
            match spec.outcome() {
                "resolved" => c[0] += 1,
                "escalated" => c[1] += 1,
                _ => c[2] += 1,
            }
        }
        c
    }

    #[test]
    fn escalation_rate_overrides_the_profile() {
        let mut spec = AgentSpec::stable();
        spec.escalation_rate = Some(1.0);
        assert_eq!(shares(&spec, 200), [0, 200, 0]);
        spec.escalation_rate = Some(0.0);
        let c = shares(&spec, 2000);
        assert_eq!(c[1], 0);
        assert!(c[0] > c[2], "resolved still dominates abandoned: {c:?}");
    }

    #[test]
    fn think_time_is_a_floor() {
        let mut spec = AgentSpec::canary();
        assert_eq!(spec.think_time(), Duration::ZERO);
        spec.latency = Duration::from_millis(300);
        for _ in 0..100 {
            let t = spec.think_time();
            assert!(t >= spec.latency && t <= spec.latency.mul_f64(1.5), "{t:?}");
        }
    }
}
