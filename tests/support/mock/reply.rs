//! What a mock upstream answers, mode by mode: JSON, echo, SSE, trailers, gRPC, WebSocket,
//! and the request headers (`x-mock-status`, `x-mock-set`) every answering mode honours.
//!
//! Owns: building responses from a received request. Must not touch: accepting connections
//! (the parent module).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use cohort::demo::ChannelBody;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{MockState, Respond, Seen, GRPC_REPLY, SSE_ONE, SSE_TWO};

type MockBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> MockBody {
    Full::new(bytes.into()).boxed()
}

pub(super) async fn mock_reply(state: &MockState, req: Request<Incoming>) -> Response<MockBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    let seen = Seen {
        method: parts.method.clone(),
        target: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
    };
    state.seen.lock().unwrap().push(seen.clone());

    let mut resp = match &state.respond {
        Respond::Hang => return std::future::pending().await,
        Respond::Gated(gate) => {
            gate.wait().await;
            let json =
                serde_json::json!({"upstream": state.name, "x_cohort": seen.all("x-cohort")});
            Response::new(full(json.to_string()))
        }
        Respond::Json => {
            let json = serde_json::json!({
                "upstream": state.name,
                "x_cohort": seen.all("x-cohort"),
                "path": seen.target,
            });
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            if let Some(o) = &state.outcome {
                r.headers_mut().insert(&state.outcome_header, o.clone());
            }
            r
        }
        Respond::Echo => Response::new(full(body)),
        Respond::Sse(gate) => {
            let (tx, body) = ChannelBody::new(4);
            let gate = gate.clone();
            tokio::spawn(async move {
                if tx.send(Frame::data(Bytes::from(SSE_ONE))).await.is_err() {
                    return;
                }
                gate.wait().await;
                let _ = tx.send(Frame::data(Bytes::from(SSE_TWO))).await;
            });
            let mut r = Response::new(body.boxed());
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        Respond::Trailers => {
            let (tx, body) = ChannelBody::new(4);
            tokio::spawn(async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
                for frame in [
                    Frame::data(Bytes::from_static(b"hello ")),
                    Frame::data(Bytes::from_static(b"world")),
                    Frame::trailers(trailers),
                ] {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(body.boxed());
            // An HTTP/1.1 server only sends the trailer fields it announced.
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-checksum"));
            r
        }
        Respond::Barrier(barrier) => {
            barrier.wait().await;
            let json =
                serde_json::json!({"upstream": state.name, "x_cohort": seen.all("x-cohort")});
            Response::new(full(json.to_string()))
        }
        Respond::Frames(f) => {
            let (tx, body) = ChannelBody::new(4);
            let f2 = Arc::clone(f);
            tokio::spawn(async move {
                for (i, b) in f2.frames.iter().enumerate() {
                    if i > 0 && !f2.gap.is_zero() {
                        tokio::time::sleep(f2.gap).await;
                    }
                    if tx.send(Frame::data(b.clone())).await.is_err() {
                        return;
                    }
                }
                if !f2.trailers.is_empty() {
                    let mut t = HeaderMap::new();
                    for (k, v) in &f2.trailers {
                        t.insert(*k, HeaderValue::from_str(v).unwrap());
                    }
                    let _ = tx.send(Frame::trailers(t)).await;
                }
            });
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static(f.content_type));
            let announced: Vec<&str> = f.trailers.iter().map(|(k, _)| *k).collect();
            if !announced.is_empty() {
                r.headers_mut().insert(
                    "trailer",
                    HeaderValue::from_str(&announced.join(", ")).unwrap(),
                );
            }
            r
        }
        Respond::Grpc => grpc_reply(&seen),
        Respond::WebSocket => websocket_reply(&seen, upgrade, false),
        Respond::WebSocketFlood => websocket_reply(&seen, upgrade, true),
    };
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_str(&state.name).unwrap());
    if let Some(status) = seen.header("x-mock-status") {
        *resp.status_mut() = StatusCode::from_bytes(status.as_bytes()).unwrap();
    }
    for set in seen.all("x-mock-set") {
        let (name, value) = set.split_once(':').expect("x-mock-set: name: value");
        resp.headers_mut().append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    resp
}

fn grpc_reply(seen: &Seen) -> Response<MockBody> {
    let status = seen.header("x-mock-grpc-status").unwrap_or("0").to_string();
    let mut status_fields = HeaderMap::new();
    status_fields.insert("grpc-status", HeaderValue::from_str(&status).unwrap());
    if let Some(m) = seen.header("x-mock-grpc-message") {
        status_fields.insert("grpc-message", HeaderValue::from_str(m).unwrap());
    }
    let mut r = if seen.header("x-mock-grpc-trailers-only").is_some() {
        let mut r = Response::new(full(Bytes::new()));
        r.headers_mut().extend(status_fields);
        r
    } else {
        let (tx, body) = ChannelBody::new(4);
        tokio::spawn(async move {
            for frame in [
                Frame::data(Bytes::from_static(GRPC_REPLY)),
                Frame::trailers(status_fields),
            ] {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Response::new(body.boxed())
    };
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

fn websocket_reply(
    seen: &Seen,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    flood: bool,
) -> Response<MockBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;

    let (Some(key), Some(upgrade)) = (seen.header("sec-websocket-key"), upgrade) else {
        let mut r = Response::new(full("not a websocket request\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if flood {
            let chunk = Message::binary(vec![7u8; 16 * 1024]);
            while ws.send(chunk.clone()).await.is_ok() {}
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).unwrap(),
    );
    r
}
