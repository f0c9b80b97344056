//! The admin listener, separate from the public ones: metrics, health, readiness, the routing
//! table as JSON, reload on demand, and the rollouts (state, and an operator's actions).
//!
//! Owns: admin HTTP endpoints and the admin listener's fixed limits (connection cap, header
//! timeout; the accept back-off is `server`'s). Must not touch: the request path, or the table
//! other than by reading it and asking `reload::Control` to reload.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::control::fleet::engine::EngineError;
use crate::control::fleet::record::Refused;
use crate::control::fleet::shared::{Fleet, WriteError};
use crate::control::reload::{Control, Outcome};
use crate::control::rollout::{Action, ActionError};
use crate::edge::server;
use crate::lifecycle::Lifecycle;

/// State the admin endpoints read.
pub struct Admin {
    pub control: Arc<Control>,
    /// True once every listener is bound, false again when draining starts.
    pub ready: AtomicBool,
    /// In a fleet: the fleet view, and the shared record operators' actions write.
    pub fleet: Option<Arc<Fleet>>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        let open = matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz");
        if !open {
            if let Some(refusal) = self.refusal(&req) {
                return refusal;
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.control.metrics.render(),
            ),
            (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::Acquire) {
                    reply(StatusCode::OK, TEXT, "ready\n")
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n")
                }
            }
            (&Method::GET, "/routes") => reply(StatusCode::OK, JSON, self.routes_json()),
            (&Method::GET, "/rollouts") => {
                let mut report = self.control.rollouts().report();
                if let (Some(f), Some(obj)) = (&self.fleet, report.as_object_mut()) {
                    obj.insert("fleet".into(), f.view());
                }
                reply(
                    StatusCode::OK,
                    JSON,
                    serde_json::to_string_pretty(&report).unwrap_or_default(),
                )
            }
            (method, path) if path.starts_with("/rollouts/") => {
                self.rollout_action(method, &path["/rollouts/".len()..])
                    .await
            }
            (&Method::POST, "/outcomes") => {
                crate::control::late::endpoint::post(
                    self.control.late(),
                    self.control.current(),
                    req,
                )
                .await
            }
            (&Method::GET, "/outcomes/history") => {
                crate::control::late::endpoint::history(self.control.late())
            }
            (&Method::POST, "/reload") => {
                let control = Arc::clone(&self.control);
                let outcome = tokio::task::spawn_blocking(move || control.reload("admin")).await;
                match outcome {
                    Ok(Outcome::Applied { generation }) => {
                        reply(StatusCode::OK, JSON, json!({"result": "applied", "generation": generation}).to_string())
                    }
                    Ok(Outcome::Unchanged) => reply(
                        StatusCode::OK,
                        JSON,
                        json!({"result": "unchanged", "generation": self.control.current().generation}).to_string(),
                    ),
                    Ok(Outcome::Rejected(e)) => {
                        reply(StatusCode::UNPROCESSABLE_ENTITY, JSON, json!({"result": "rejected", "error": e}).to_string())
                    }
                    Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "reload task failed\n"),
                }
            }
            (
                _,
                "/metrics" | "/healthz" | "/readyz" | "/routes" | "/reload" | "/rollouts"
                | "/outcomes" | "/outcomes/history",
            ) => reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n"),
            _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }

    /// `POST /rollouts/{route}/{pause|resume|promote|rollback}`: `rest` is `{route}/{action}`.
    async fn rollout_action(&self, method: &Method, rest: &str) -> Reply {
        let error =
            |status, message: String| reply(status, JSON, json!({ "error": message }).to_string());
        let Some((route, action)) = rest.rsplit_once('/') else {
            return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
        };
        let Some(action) = Action::parse(action) else {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown rollout action {action:?}: use pause, resume, promote or rollback"
                ),
            );
        };
        if method != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        }
        if let Some(fleet) = &self.fleet {
            return match fleet.act(self.control.rollouts(), route, action).await {
                Ok(d) => reply(
                    StatusCode::OK,
                    JSON,
                    json!({ "result": d.decision, "decision": d, "fleet": true }).to_string(),
                ),
                Err(e @ WriteError::Refused(Refused::NoRecord)) => {
                    error(StatusCode::NOT_FOUND, format!("route {route:?}: {e}"))
                }
                Err(e @ (WriteError::Refused(_) | WriteError::Corrupt { .. })) => {
                    error(StatusCode::CONFLICT, e.to_string())
                }
                Err(e @ WriteError::Engine(EngineError::Conflict { .. })) => {
                    error(StatusCode::CONFLICT, e.to_string())
                }
                Err(e @ WriteError::Engine(_)) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the fleet's record cannot be written now: {e}"),
                ),
            };
        }
        let (control, route) = (Arc::clone(&self.control), route.to_string());
        match tokio::task::spawn_blocking(move || control.rollout_action(&route, action)).await {
            Ok(Ok(d)) => reply(
                StatusCode::OK,
                JSON,
                json!({ "result": d.decision, "decision": d }).to_string(),
            ),
            Ok(Err(e @ ActionError::NotFound(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
            Ok(Err(e @ ActionError::Conflict(_))) => error(StatusCode::CONFLICT, e.to_string()),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "rollout action failed\n",
            ),
        }
    }

    /// Why a guarded endpoint is refused, if it is: it needs the bearer token when one is
    /// configured, and without one it is served only on a loopback admin address.
    fn refusal(&self, req: &Request<Incoming>) -> Option<Reply> {
        use subtle::ConstantTimeEq;
        let table = self.control.current();
        let Some(token) = table.admin_token.as_deref() else {
            if table.admin_address.ip().is_loopback() {
                return None;
            }
            return Some(reply(
                StatusCode::FORBIDDEN,
                TEXT,
                "this admin endpoint needs admin.token_file when the admin address is not loopback\n",
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if given.is_some_and(|g| bool::from(g.ct_eq(token.as_bytes()))) {
            return None;
        }
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            TEXT,
            "a bearer token is required\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }

    /// The serving table: generation, each route's bands (the effective percents, with the
    /// file's beside them), its rollout in brief, and the last reload error.
    pub fn routes_json(&self) -> String {
        let t = self.control.current();
        let routes: Vec<_> = t
            .routes
            .iter()
            .map(|r| {
                let bands = r.bands.as_slice();
                json!({
                    "name": r.name,
                    "salt": r.salt,
                    "seed": r.seed,
                    "cohorts": r.cohorts.iter().zip(bands).map(|(c, b)| json!({
                        "cohort": c.name,
                        "upstream": c.upstream.name(),
                        "percent": f64::from(c.weight) / 100.0,
                        "configured_percent": f64::from(c.configured) / 100.0,
                        "buckets": [b.start, b.end],
                    })).collect::<Vec<_>>(),
                    "rollout": self.control.rollouts().summary(&r.name),
                    "pin": r.pin.as_ref().map(|p| p.summary()),
                })
            })
            .collect();
        let last_error = self.control.last_error().map(|e| {
            json!({
                "message": e.message,
                "at": humantime::format_rfc3339_seconds(e.at).to_string(),
                "at_unix": e.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            })
        });
        let doc = json!({
            "generation": t.generation,
            "config_hash": format!("{:016x}", t.config_hash),
            "routes": routes,
            "last_reload_error": last_error,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// Open admin connections beyond this are answered 503 and closed: scrapers, probes and an
/// operator need a handful, and each one held costs a descriptor the public listeners need.
pub const MAX_CONNECTIONS: usize = 32;

/// A request head must arrive within this, on a new connection or between kept-alive requests
/// (hyper's timer, which starts at the first read): probes and scrapers send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoints until `life.abort` fires (it outlives draining, so `/readyz`
/// can report 503 while public listeners drain). Accept errors back off as the public
/// listeners' do.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, life: Lifecycle) {
    let local = listener.local_addr().ok();
    let open = Arc::new(AtomicUsize::new(0));
    let uncounted = metrics::Gauge::noop();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(16 * 1024);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = life.abort.cancelled() => break,
            a = server::accept(&listener, local) => a,
        };
        let Some((stream, _)) = accepted else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            tokio::spawn(server::refuse(stream));
            continue;
        }
        let guard = server::OpenGuard::new(&open, &uncounted);
        let (admin, builder) = (Arc::clone(&admin), Arc::clone(&builder));
        let abort = life.abort.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let svc = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = abort.cancelled() => {}
            }
        });
    }
}
