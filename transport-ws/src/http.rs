//! HTTP routes on the WebSocket listener: upgrade, publish, admin invalidation, health, metrics,
//! and the optional static files.

use std::sync::Arc;

use broker_core::{
    AuthError, Broker, ChannelName, ErrorCode, InvalidationFilter, JsonPayload, PROTOCOL_V1,
    WireError,
};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::assets::StaticAssets;
use crate::config::WsConfig;
use crate::credential::{bearer, client_credential};
use crate::io::ChunkedReader;
use crate::ws;

pub(crate) type Body = Full<Bytes>;

/// The broker's own paths; static files may not take them.
pub(crate) const API_ROUTES: &[&str] = &[
    "/ws",
    "/publish",
    "/admin/unsubscribe",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// What every request handler needs.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: Arc<WsConfig>,
    pub(crate) assets: Arc<StaticAssets>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

pub(crate) async fn route(req: Request<Incoming>, shared: Shared) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => upgrade(req, shared).await,
        (&Method::POST, "/publish") => publish(req, &shared).await,
        (&Method::POST, "/admin/unsubscribe") => admin_unsubscribe(req, &shared).await,
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        (&Method::GET, "/readyz") => match shared.broker.is_ready() {
            true => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
            false => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"starting"}"#.into(),
            ),
        },
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::from(shared.broker.metrics().encode()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, "/ws" | "/publish" | "/admin/unsubscribe" | "/healthz" | "/readyz" | "/metrics") => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "method not allowed",
            )
        }
        (method, path) => shared
            .assets
            .respond(method, path, req.headers())
            .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "not_found", "no such route")),
    }
}

/// One of [`WsConfig::max_connections`](crate::WsConfig::max_connections)'s slots, held by a
/// TCP connection's HTTP task and, once upgraded, by its WebSocket task.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSlot {
    /// Released when the last holder drops it.
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    pub(crate) fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }
}

async fn upgrade(mut req: Request<Incoming>, shared: Shared) -> Response<Body> {
    let headers = req.headers();
    let is_upgrade = header_has(headers.get(UPGRADE), "websocket")
        && header_has(headers.get(CONNECTION), "upgrade");
    let key = headers.get(SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, is_upgrade, version_ok) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a WebSocket upgrade (version 13)",
        );
    };
    let credential = client_credential(headers, req.uri().query(), true);
    let principal = match shared.broker.authenticate(credential.as_deref()).await {
        Ok(p) => p,
        Err(e) => return auth_error(&e),
    };
    let offers_v1 = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL_V1);

    let slot = req.extensions_mut().remove::<ConnectionSlot>();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let Shared {
        broker,
        config,
        shutdown,
        tasks,
        ..
    } = shared;
    tasks.spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(config.write_buffer_size)
            .max_write_buffer_size(
                config
                    .write_buffer_size
                    .saturating_mul(4)
                    .max(config.max_frame_size * 2),
            )
            .max_message_size(Some(config.max_frame_size))
            .max_frame_size(Some(config.max_frame_size));
        let io = ChunkedReader::new(TokioIo::new(upgraded));
        let stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        tracing::debug!(principal = principal.id(), "websocket connected");
        let session = broker.connect(principal);
        ws::run(stream, session, config, shutdown).await;
    });

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    // The accept key is base64, always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_v1 {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(PROTOCOL_V1),
        );
    }
    resp
}

fn header_has(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "present_raw")]
    data: Option<&'a RawValue>,
}

fn present_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

async fn publish(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let credential = client_credential(req.headers(), None, false);
    let principal = match shared.broker.authenticate(credential.as_deref()).await {
        Ok(p) => p,
        Err(e) => return auth_error(&e),
    };
    let body = match read_body(req, shared.config.max_frame_size).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let parsed: PublishBody<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("malformed JSON: {e}"),
            );
        }
    };
    let (Some(channel), Some(data)) = (parsed.channel, parsed.data) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "body needs `channel` and `data`",
        );
    };
    match shared
        .broker
        .publish(&principal, &channel, JsonPayload::from_raw(data))
        .await
    {
        Ok(id) => json(
            StatusCode::OK,
            serde_json::json!({ "message_id": id.as_str() }).to_string(),
        ),
        Err(e) => wire_error(&e),
    }
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    channel: Option<String>,
}

async fn admin_unsubscribe(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let token = bearer(req.headers());
    let principal = match shared.broker.authenticate(token.as_deref()).await {
        Ok(p) => p,
        Err(e) => return auth_error(&e),
    };
    if !principal.is_admin() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an admin token is required",
        );
    }
    let body = match read_body(req, 64 * 1024).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let channel = match serde_json::from_slice::<UnsubscribeBody>(&body) {
        Ok(UnsubscribeBody { channel: Some(c) }) => c,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "body needs `channel`",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("malformed JSON: {e}"),
            );
        }
    };
    let channel = match ChannelName::parse(&channel) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                &format!("invalid channel: {e}"),
            );
        }
    };
    let filter = InvalidationFilter::Channel(channel.clone());
    match shared.broker.invalidate(&principal, filter).await {
        Ok(n) => json(
            StatusCode::OK,
            serde_json::json!({ "channel": channel.as_str(), "invalidated": n }).to_string(),
        ),
        Err(e) => wire_error(&e),
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("body is over the limit of {limit} bytes"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("body: {e}"),
        )),
    }
}

fn auth_error(e: &AuthError) -> Response<Body> {
    let mut resp = wire_error(e);
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    resp
}

fn wire_error(e: &dyn WireError) -> Response<Body> {
    let code: ErrorCode = e.code();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, code.as_str(), &e.to_string())
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "code": code, "message": message }).to_string(),
    )
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
