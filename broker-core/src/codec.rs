//! Wire dialects, sans-IO: bytes of one frame in, a [`Request`] out; [`ServerFrame`]s and
//! messages in, bytes out. Transports move the bytes; the session logic is shared.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{DecodeError, DecodeErrorKind, ErrorCode};
use crate::ids::{ChannelName, MessageId};
use crate::message::{Envelope, Message};

/// The WebSocket subprotocol and QUIC ALPN name of [`JsonCodec`].
pub const PROTOCOL_V1: &str = "pubsub.v1";

/// One client request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    /// The client's opaque request id, echoed in the reply.
    pub id: Option<String>,
    /// What is asked.
    pub kind: RequestKind,
}

/// What a client asks for.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum RequestKind {
    /// Start receiving a channel's messages. The name is validated by the session.
    Subscribe {
        /// The channel, as sent.
        channel: String,
    },
    /// Stop receiving a channel's messages.
    Unsubscribe {
        /// The channel, as sent.
        channel: String,
    },
    /// Publish one JSON value.
    Publish {
        /// The channel, as sent.
        channel: String,
        /// The payload, one JSON value as raw bytes.
        data: Bytes,
    },
    /// Liveness check; answered with `pong`.
    Ping,
    /// Authenticate on transports without HTTP headers (QUIC).
    Auth {
        /// The credential.
        api_key: Secret,
    },
}

/// A credential received on the wire. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A frame the server sends, other than a channel message.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ServerFrame {
    /// Reply to a subscribe.
    Subscribed {
        /// The request id.
        id: Option<String>,
        /// The channel.
        channel: ChannelName,
    },
    /// Reply to an unsubscribe.
    Unsubscribed {
        /// The request id.
        id: Option<String>,
        /// The channel.
        channel: ChannelName,
    },
    /// Reply to a publish: the message is accepted.
    Published {
        /// The request id.
        id: Option<String>,
        /// The id given to the message.
        message_id: MessageId,
    },
    /// Reply to a ping.
    Pong {
        /// The request id.
        id: Option<String>,
    },
    /// Reply to a successful auth.
    Authed {
        /// The request id.
        id: Option<String>,
    },
    /// A request failed, or a frame could not be read.
    Error {
        /// The request id, when known.
        id: Option<String>,
        /// The wire error code.
        code: ErrorCode,
        /// A human-readable explanation; never contains a credential.
        message: String,
    },
    /// An administrator ended this subscription.
    Invalidated {
        /// The channel.
        channel: ChannelName,
    },
}

/// A wire dialect. Implementations are stateless and shared by all connections.
pub trait Codec: Send + Sync + fmt::Debug {
    /// Decodes one client frame.
    fn decode(&self, frame: &[u8]) -> Result<Request, DecodeError>;

    /// Encodes a reply or notice.
    fn encode(&self, frame: &ServerFrame) -> Bytes;

    /// Encodes a channel message, ideally once per publish through [`Envelope::encoded`].
    fn encode_message(&self, envelope: &Envelope) -> Bytes;
}

/// The `pubsub.v1` JSON dialect, documented in `docs/PROTOCOL.md`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

/// The [`Envelope`] encoding slot used by [`JsonCodec`].
const JSON_SLOT: usize = 0;

impl JsonCodec {
    /// [`Codec::encode_message`] without the `Bytes` clone: the envelope's cached encoding,
    /// borrowed. Always valid UTF-8 (see [`encode_message_json`]), so transports may send it as
    /// text without checking it again for every subscriber.
    pub fn encode_message_ref<'e>(&self, envelope: &'e Envelope) -> &'e [u8] {
        envelope.encoded_ref(JSON_SLOT, encode_message_json)
    }
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "present_raw")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    api_key: Option<String>,
}

/// Keeps an explicit `null` as `Some("null")`, so that only an absent field is "missing".
fn present_raw<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

impl Codec for JsonCodec {
    fn decode(&self, frame: &[u8]) -> Result<Request, DecodeError> {
        if let Some(request) = decode_plain_publish(frame) {
            return Ok(request);
        }
        let wire: WireRequest<'_> = serde_json::from_slice(frame).map_err(|e| DecodeError {
            id: None,
            kind: DecodeErrorKind::Malformed(e.to_string()),
        })?;
        let id = wire.id;
        let fail = |id: Option<String>, kind| Err(DecodeError { id, kind });
        let Some(ty) = wire.ty else {
            return fail(id, DecodeErrorKind::MissingField("type"));
        };
        let channel = |id: &Option<String>, c: Option<String>| {
            c.ok_or_else(|| DecodeError {
                id: id.clone(),
                kind: DecodeErrorKind::MissingField("channel"),
            })
        };
        let kind = match &*ty {
            "subscribe" => RequestKind::Subscribe {
                channel: channel(&id, wire.channel)?,
            },
            "unsubscribe" => RequestKind::Unsubscribe {
                channel: channel(&id, wire.channel)?,
            },
            "publish" => {
                let channel = channel(&id, wire.channel)?;
                let Some(data) = wire.data else {
                    return fail(id, DecodeErrorKind::MissingField("data"));
                };
                RequestKind::Publish {
                    channel,
                    data: Bytes::copy_from_slice(data.get().as_bytes()),
                }
            }
            "ping" => RequestKind::Ping,
            "auth" => match wire.api_key {
                Some(k) => RequestKind::Auth { api_key: Secret(k) },
                None => return fail(id, DecodeErrorKind::MissingField("api_key")),
            },
            other => {
                // Echo at most a short prefix of an unknown type: it is client input.
                let shown: String = other.chars().take(32).collect();
                return fail(id, DecodeErrorKind::UnknownType(shown));
            }
        };
        Ok(Request { id, kind })
    }

    fn encode(&self, frame: &ServerFrame) -> Bytes {
        let mut w = JsonWriter::new(64);
        match frame {
            ServerFrame::Subscribed { id, channel } => {
                w.ty("subscribed")
                    .opt_str("id", id)
                    .str("channel", channel.as_str());
            }
            ServerFrame::Unsubscribed { id, channel } => {
                w.ty("unsubscribed")
                    .opt_str("id", id)
                    .str("channel", channel.as_str());
            }
            ServerFrame::Published { id, message_id } => {
                w.ty("published")
                    .opt_str("id", id)
                    .str("message_id", message_id.as_str());
            }
            ServerFrame::Pong { id } => {
                w.ty("pong").opt_str("id", id);
            }
            ServerFrame::Authed { id } => {
                w.ty("authed").opt_str("id", id);
            }
            ServerFrame::Error { id, code, message } => {
                w.ty("error")
                    .opt_str("id", id)
                    .str("code", code.as_str())
                    .str("message", message);
            }
            ServerFrame::Invalidated { channel } => {
                w.ty("invalidated").str("channel", channel.as_str());
            }
        }
        w.finish()
    }

    fn encode_message(&self, envelope: &Envelope) -> Bytes {
        envelope.encoded(JSON_SLOT, encode_message_json)
    }
}

/// The most common frame of all, a publish written the plain way —
/// `{"type":"publish",["id":"…",]"channel":"…","data":…}`, no whitespace around the keys, no
/// escapes in the strings — decoded without serde's generic struct machinery (which costs more
/// than the rest of a publish's bookkeeping). Anything else returns `None` and goes through the
/// full decoder; for what this accepts, the full decoder returns the same request.
fn decode_plain_publish(frame: &[u8]) -> Option<Request> {
    let rest = frame.strip_prefix(br#"{"type":"publish","#)?;
    let (id, rest) = match rest.strip_prefix(br#""id":""#) {
        Some(r) => {
            let (id, r) = plain_string(r)?;
            (Some(id.to_owned()), r.strip_prefix(b",")?)
        }
        None => (None, rest),
    };
    let (channel, rest) = plain_string(rest.strip_prefix(br#""channel":""#)?)?;
    let data = rest.strip_prefix(br#","data":"#)?.strip_suffix(b"}")?;
    // One JSON value exactly as the full decoder would keep it: nothing around it (the full
    // decoder drops surrounding whitespace, and anything after it means more fields).
    let edge = |b: Option<&u8>| b.is_some_and(|b| !b" \t\n\r".contains(b));
    if !edge(data.first()) || !edge(data.last()) {
        return None;
    }
    serde_json::from_slice::<&RawValue>(data).ok()?;
    Some(Request {
        id,
        kind: RequestKind::Publish {
            channel: channel.to_owned(),
            data: Bytes::copy_from_slice(data),
        },
    })
}

/// A JSON string's content up to its closing quote, if it has no escape or control character;
/// and what follows the quote.
fn plain_string(s: &[u8]) -> Option<(&str, &[u8])> {
    let end = s
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if s[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&s[..end]).ok()?, &s[end + 1..]))
}

/// `{"type":"message","channel":…,"message_id":…,"origin":…,"data":…}`, with `data` copied
/// verbatim: it was validated as JSON when it was published.
///
/// The output is always valid UTF-8, as JSON text must be: data that is not (which only a
/// corrupted replication store could hand over) has its invalid sequences replaced by U+FFFD.
/// The check runs once per message, not once per subscriber.
pub fn encode_message_json(m: &Message) -> Bytes {
    let data = match std::str::from_utf8(&m.data) {
        Ok(_) => std::borrow::Cow::Borrowed(&m.data[..]),
        Err(_) => {
            std::borrow::Cow::Owned(String::from_utf8_lossy(&m.data).into_owned().into_bytes())
        }
    };
    let mut w = JsonWriter::new(96 + data.len());
    w.ty("message")
        .str("channel", m.channel.as_str())
        .str("message_id", m.id.as_str())
        .str("origin", m.origin.as_str())
        .raw("data", &data);
    w.finish()
}

/// A tiny writer for flat JSON objects; faster than building a `serde_json::Value`.
struct JsonWriter {
    buf: Vec<u8>,
}

impl JsonWriter {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(b'{');
        Self { buf }
    }

    fn key(&mut self, key: &str) -> &mut Self {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self
    }

    fn ty(&mut self, ty: &str) -> &mut Self {
        self.str("type", ty)
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Nothing to escape (ids, region and most channel names): copy it.
            self.buf.push(b'"');
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.push(b'"');
        } else {
            // Writing a &str into a Vec cannot fail.
            serde_json::to_writer(&mut self.buf, value)
                .expect("string serialisation is infallible");
        }
        self
    }

    fn opt_str(&mut self, key: &str, value: &Option<String>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    fn raw(&mut self, key: &str, json: &[u8]) -> &mut Self {
        self.key(key);
        self.buf.extend_from_slice(json);
        self
    }

    fn finish(&mut self) -> Bytes {
        self.buf.push(b'}');
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::ids::RegionName;

    fn decode(s: &str) -> Result<Request, DecodeError> {
        JsonCodec.decode(s.as_bytes())
    }

    #[test]
    fn decodes_every_request_type() {
        let r = decode(r#"{"type":"subscribe","id":"1","channel":"tech"}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("1"));
        assert_eq!(
            r.kind,
            RequestKind::Subscribe {
                channel: "tech".into()
            }
        );
        let r = decode(r#"{"type":"unsubscribe","id":"2","channel":"tech"}"#).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Unsubscribe {
                channel: "tech".into()
            }
        );
        let r =
            decode(r#"{"type":"publish","id":"3","channel":"tech","data":{"a":[1, 2]}}"#).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Publish {
                channel: "tech".into(),
                data: Bytes::from_static(b"{\"a\":[1, 2]}")
            }
        );
        let r = decode(r#"{"type":"publish","channel":"tech","data":null}"#).unwrap();
        assert_eq!(r.id, None);
        assert!(matches!(r.kind, RequestKind::Publish { ref data, .. } if data == "null"));
        assert_eq!(
            decode(r#"{"type":"ping","id":"4"}"#).unwrap().kind,
            RequestKind::Ping
        );
        let r = decode(r#"{"type":"auth","id":"a","api_key":"k"}"#).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Auth {
                api_key: Secret("k".into())
            }
        );
        assert!(!format!("{r:?}").contains("\"k\""));
    }

    #[test]
    fn rejects_bad_frames_keeping_the_id() {
        let e = decode("not json").unwrap_err();
        assert_eq!(
            (e.id, matches!(e.kind, DecodeErrorKind::Malformed(_))),
            (None, true)
        );
        let e = decode(r#"[1,2]"#).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::Malformed(_)));
        let e = decode(r#"{"id":"9"}"#).unwrap_err();
        assert_eq!(
            e,
            DecodeError {
                id: Some("9".into()),
                kind: DecodeErrorKind::MissingField("type")
            }
        );
        let e = decode(r#"{"type":"dance","id":"9"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnknownType("dance".into()));
        let e = decode(r#"{"type":"publish","id":"9","channel":"tech"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MissingField("data"));
        let e = decode(r#"{"type":"subscribe","id":"9"}"#).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::MissingField("channel"));
        let e = decode(r#"{"type":"subscribe","id":"9","channel":7}"#).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::Malformed(_)));
    }

    /// Random bytes and mutated valid frames: decoding returns, it never panics.
    #[test]
    fn decoding_arbitrary_input_never_panics() {
        let seeds: [&[u8]; 4] = [
            br#"{"type":"publish","id":"3","channel":"tech","data":{"a":[1,"x",null]}}"#,
            br#"{"type":"subscribe","id":"1","channel":"tech"}"#,
            br#"{"type":"auth","id":"a","api_key":"k"}"#,
            br#"{"type":"ping"}"#,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let r = next();
                let pos = (r as usize >> 8) % (input.len() + 1);
                match r % 4 {
                    0 if pos < input.len() => input[pos] = (r >> 32) as u8,
                    1 => input.insert(pos, (r >> 40) as u8),
                    2 if pos < input.len() => {
                        input.remove(pos);
                    }
                    _ => input.truncate(pos),
                }
            }
            let _ = JsonCodec.decode(&input);
        }
    }

    #[test]
    fn encodes_frames_as_documented() {
        let tech = ChannelName::parse("tech").unwrap();
        let enc =
            |f: ServerFrame| -> Value { serde_json::from_slice(&JsonCodec.encode(&f)).unwrap() };
        assert_eq!(
            enc(ServerFrame::Subscribed {
                id: Some("1".into()),
                channel: tech.clone()
            }),
            json!({"type":"subscribed","id":"1","channel":"tech"})
        );
        assert_eq!(enc(ServerFrame::Pong { id: None }), json!({"type":"pong"}));
        assert_eq!(
            enc(ServerFrame::Error {
                id: Some("q\"x".into()),
                code: ErrorCode::ChannelNotAllowed,
                message: "no".into()
            }),
            json!({"type":"error","id":"q\"x","code":"channel_not_allowed","message":"no"})
        );
        assert_eq!(
            enc(ServerFrame::Invalidated {
                channel: tech.clone()
            }),
            json!({"type":"invalidated","channel":"tech"})
        );
        let env = Envelope::new(Message {
            channel: ChannelName::parse("a\"b").unwrap(),
            data: Bytes::from_static(br#"{"text":"hi"}"#),
            id: MessageId::new("m1"),
            origin: RegionName::default(),
        });
        let first = JsonCodec.encode_message(&env);
        let v: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","channel":"a\"b","message_id":"m1","origin":"local","data":{"text":"hi"}})
        );
        // Encoded once: the second call returns the same allocation.
        assert_eq!(JsonCodec.encode_message(&env).as_ptr(), first.as_ptr());
        assert_eq!(JsonCodec.encode_message_ref(&env).as_ptr(), first.as_ptr());
    }

    #[test]
    fn the_plain_publish_path_agrees_with_the_full_decoder() {
        let full = |f: &str| -> Result<Request, DecodeError> {
            // The full decoder, bypassing the plain path: an extra space after the first brace.
            JsonCodec.decode(format!("{{ {}", &f[1..]).as_bytes())
        };
        let accepted = [
            r#"{"type":"publish","channel":"tech","data":{"t":1,"x":"y"}}"#,
            r#"{"type":"publish","id":"7","channel":"a.b-c","data":[1, 2]}"#,
            r#"{"type":"publish","channel":"tech","data":"é"}"#,
            r#"{"type":"publish","channel":"tech","data":null}"#,
        ];
        for f in accepted {
            let plain = decode_plain_publish(f.as_bytes()).expect(f);
            assert_eq!(Ok(plain), full(f), "{f}");
        }
        let declined = [
            r#"{"type":"publish","channel":"tech","data":{"t":1},"more":2}"#,
            r#"{"type":"publish","channel":"te"ch","data":1}"#,
            r#"{"type":"publish","channel":"tech","data": 1}"#,
            r#"{"type":"publish","channel":"tech","data":1 }"#,
            r#"{"type":"publish","channel":"tech","data":{"t":1}"#,
            r#"{"type":"publish","channel":"tech","data":}"#,
            r#"{"type":"publish","channel":"tech","data":{"a":1}}}"#,
            r#"{"type":"publish","id":7,"channel":"tech","data":1}"#,
            r#"{"type":"publish","channel":"tech"}"#,
            r#"{"type":"subscribe","channel":"tech"}"#,
        ];
        for f in declined {
            assert_eq!(decode_plain_publish(f.as_bytes()), None, "{f}");
            // And the full decoder still decides, as before.
            let _ = JsonCodec.decode(f.as_bytes());
        }
        assert_eq!(
            JsonCodec.decode(declined[0].as_bytes()).unwrap().kind,
            RequestKind::Publish {
                channel: "tech".into(),
                data: Bytes::from_static(br#"{"t":1}"#)
            }
        );
    }

    #[test]
    fn message_encodings_are_always_utf8() {
        let env = Envelope::new(Message {
            channel: ChannelName::parse("tech").unwrap(),
            data: Bytes::from_static(b"\"a\xffb\""),
            id: MessageId::new("m1"),
            origin: RegionName::default(),
        });
        let text = std::str::from_utf8(JsonCodec.encode_message_ref(&env)).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["data"], json!("a\u{fffd}b"));
    }
}
