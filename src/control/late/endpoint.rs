//! `POST /outcomes` and `GET /outcomes/history` on the admin listener (behind its token, as the
//! other admin endpoints that change anything): the body read within the section's limits, the
//! events handed to [`super::Late::ingest`], the answer as JSON.
//!
//! Owns: the HTTP exchange and its bounds (413 for a body or batch too large, 408 for one too
//! slow, 400 for one that is not JSON of the documented shape). Must not touch: attribution
//! (`attribute`), the admin listener's routing and token check (`control::admin`).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::event::{self, Reason};
use super::{now_ms, Late};
use crate::routing::table::RoutingTable;

type Reply = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_string_pretty(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A body refused whole, counted once under `reason`; the connection is closed after the
/// answer, since what is left of the body was never read.
fn whole(late: &Late, status: StatusCode, reason: Reason, message: String) -> Reply {
    late.refused_whole(reason);
    let mut r = answer(
        status,
        &json!({ "error": message, "reason": reason.as_str() }),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `POST /outcomes`.
pub async fn post(late: &Late, table: Arc<RoutingTable>, req: Request<Incoming>) -> Reply {
    let spec = &table.late;
    let too_large = || {
        format!(
            "the body is larger than late_outcomes.max_body_bytes ({} bytes)",
            spec.max_body_bytes
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > spec.max_body_bytes) {
        return whole(
            late,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::TooLarge,
            too_large(),
        );
    }
    let limit = usize::try_from(spec.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit);
    let bytes = match tokio::time::timeout(spec.read_timeout, body.collect()).await {
        Err(_) => {
            return whole(
                late,
                StatusCode::REQUEST_TIMEOUT,
                Reason::ReadTimeout,
                format!(
                    "the body did not arrive within late_outcomes.read_timeout ({})",
                    humantime::format_duration(spec.read_timeout)
                ),
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return whole(
                late,
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                too_large(),
            )
        }
        Ok(Err(e)) => {
            return whole(
                late,
                StatusCode::BAD_REQUEST,
                Reason::Malformed,
                format!("the body could not be read: {e}"),
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let doc: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return whole(
                late,
                StatusCode::BAD_REQUEST,
                Reason::Malformed,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    let items = match event::events(&doc) {
        Ok(items) => items,
        Err(message) => return whole(late, StatusCode::BAD_REQUEST, Reason::Malformed, message),
    };
    if items.len() > spec.max_events {
        return whole(
            late,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::TooLarge,
            format!(
                "{} events is more than late_outcomes.max_events ({})",
                items.len(),
                spec.max_events
            ),
        );
    }
    answer(StatusCode::OK, &late.ingest(&table, items, now_ms()))
}

/// `GET /outcomes/history`: every split kept, for attributing offline.
pub fn history(late: &Late) -> Reply {
    answer(StatusCode::OK, &late.history_json())
}
