//! A small async client for the `pubsub.v1` WebSocket protocol, for tests, tools and services
//! that talk to a broker.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A message received on a subscribed channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The channel.
    pub channel: String,
    /// The broker's id for the message.
    pub message_id: String,
    /// The region where it was published.
    pub origin: String,
    /// The payload, as JSON text.
    pub data: String,
}

/// Something the server sent that was not the reply being waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A channel message.
    Message(Received),
    /// An administrator ended the subscription to this channel.
    Invalidated(String),
    /// A reply to a request sent without waiting (see [`Client::send_publish`]).
    Published {
        /// The request id.
        id: Option<String>,
        /// The message id.
        message_id: String,
    },
    /// An error reply.
    Error {
        /// The request id, if any.
        id: Option<String>,
        /// The wire error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server closed the connection.
    Closed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The WebSocket connection or handshake failed (an HTTP 401 lands here).
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The server answered the request with an error.
    #[error("{code}: {message}")]
    Refused {
        /// The wire error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The connection closed while waiting.
    #[error("connection closed (code {code:?}: {reason})")]
    Closed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// The server sent something that is not `pubsub.v1`.
    #[error("unexpected frame: {0}")]
    Protocol(String),
}

/// A `pubsub.v1` client over one WebSocket connection.
///
/// Calls that wait for a reply ([`Client::subscribe`], [`Client::publish`], …) keep any
/// messages that arrive meanwhile; [`Client::next_event`] returns them first.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pending: VecDeque<Event>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: String,
    id: Option<String>,
    channel: Option<String>,
    message_id: Option<String>,
    origin: Option<String>,
    code: Option<String>,
    message: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) with an API key.
    pub async fn connect(url: &str, api_key: &str) -> Result<Self, ClientError> {
        let mut req = url.into_client_request()?;
        let key = HeaderValue::from_str(api_key)
            .map_err(|_| ClientError::Protocol("API key is not a valid header value".into()))?;
        req.headers_mut().insert("x-api-key", key);
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("pubsub.v1"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Self {
            ws,
            next_id: 0,
            pending: VecDeque::new(),
        })
    }

    /// Subscribes to `channel` and waits for the broker's answer.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        let id = self.send("subscribe", channel, None).await?;
        self.reply(&id, "subscribed").await.map(|_| ())
    }

    /// Unsubscribes from `channel` and waits for the broker's answer.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        let id = self.send("unsubscribe", channel, None).await?;
        self.reply(&id, "unsubscribed").await.map(|_| ())
    }

    /// Publishes `data` (JSON text) on `channel`; returns the message id once acknowledged.
    pub async fn publish(&mut self, channel: &str, data: &str) -> Result<String, ClientError> {
        let id = self.send("publish", channel, Some(data)).await?;
        let reply = self.reply(&id, "published").await?;
        reply.ok_or_else(|| ClientError::Protocol("published without message_id".into()))
    }

    /// Sends a publish without waiting; its `Published` or `Error` reply arrives as an
    /// [`Event`]. Returns the request id.
    pub async fn send_publish(&mut self, channel: &str, data: &str) -> Result<String, ClientError> {
        self.send("publish", channel, Some(data)).await
    }

    /// The next message or notice from the server.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(e);
        }
        loop {
            if let Some(e) = self.read_event().await? {
                return Ok(e);
            }
        }
    }

    /// The next channel message, skipping other events; fails if the connection closes.
    pub async fn next_message(&mut self) -> Result<Received, ClientError> {
        loop {
            match self.next_event().await? {
                Event::Message(m) => return Ok(m),
                Event::Closed { code, reason } => return Err(ClientError::Closed { code, reason }),
                _ => {}
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }

    async fn send(
        &mut self,
        ty: &str,
        channel: &str,
        data: Option<&str>,
    ) -> Result<String, ClientError> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let mut frame = serde_json::json!({"type": ty, "id": id, "channel": channel}).to_string();
        if let Some(data) = data {
            // Splice the caller's JSON text in as is: no parse and re-serialise.
            frame.pop();
            frame.push_str(",\"data\":");
            frame.push_str(data);
            frame.push('}');
        }
        self.ws.send(WsMessage::Text(frame.into())).await?;
        Ok(id)
    }

    /// Reads until the reply to `id`; returns its `message_id`, if any. Everything else that
    /// arrives meanwhile is kept for [`Client::next_event`].
    async fn reply(&mut self, id: &str, expected: &str) -> Result<Option<String>, ClientError> {
        loop {
            let text = match self.ws.next().await {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(ClientError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
            };
            let f: Frame<'_> =
                serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if f.id.as_deref() == Some(id) {
                if f.ty == expected {
                    return Ok(f.message_id);
                }
                if f.ty == "error" {
                    return Err(ClientError::Refused {
                        code: f.code.unwrap_or_default(),
                        message: f.message.unwrap_or_default(),
                    });
                }
            }
            if let Some(e) = to_event(f) {
                self.pending.push_back(e);
            }
        }
    }

    /// One frame from the socket as an event; `None` for frames that are not events.
    async fn read_event(&mut self) -> Result<Option<Event>, ClientError> {
        match self.ws.next().await {
            None => Ok(Some(Event::Closed {
                code: None,
                reason: String::new(),
            })),
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                Ok(Some(Event::Closed {
                    code: None,
                    reason: String::new(),
                }))
            }
            Some(Err(tungstenite::Error::Io(_) | tungstenite::Error::Protocol(_))) => {
                Ok(Some(Event::Closed {
                    code: None,
                    reason: "connection lost".into(),
                }))
            }
            Some(Err(e)) => Err(e.into()),
            Some(Ok(WsMessage::Text(text))) => {
                let f: Frame<'_> = serde_json::from_str(&text)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                Ok(to_event(f))
            }
            Some(Ok(WsMessage::Close(frame))) => Ok(Some(Event::Closed {
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            })),
            Some(Ok(_)) => Ok(None),
        }
    }
}

fn to_event(f: Frame<'_>) -> Option<Event> {
    match f.ty.as_str() {
        "message" => Some(Event::Message(Received {
            channel: f.channel.unwrap_or_default(),
            message_id: f.message_id.unwrap_or_default(),
            origin: f.origin.unwrap_or_default(),
            data: f.data.map(|d| d.get().to_owned()).unwrap_or_default(),
        })),
        "invalidated" => Some(Event::Invalidated(f.channel.unwrap_or_default())),
        "published" => Some(Event::Published {
            id: f.id,
            message_id: f.message_id.unwrap_or_default(),
        }),
        "error" => Some(Event::Error {
            id: f.id,
            code: f.code.unwrap_or_default(),
            message: f.message.unwrap_or_default(),
        }),
        _ => None,
    }
}
