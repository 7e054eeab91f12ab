//! The stream entry format, sans-IO: what one XADD carries and how an XREAD reply is parsed.
//!
//! An entry is a flat field list. Messages are one field, `m=<message id> <origin> <channel>
//! <json>` (space-separated; ids, region and channel names never contain spaces, and the JSON
//! is the rest of the value): one field instead of five makes every XADD, stream read and
//! import cheaper for Redis and for the brokers, whose cost per message is mostly parsing the
//! RESP values of stream replies. The earlier five-field form, `k=m id=<message id> o=<origin>
//! c=<channel> d=<json>`, is still read (and written for an id that contains a space).
//! Invalidations: `k=i o=<origin> n=<node> s=<g|r> f=<c|p> v=<value>` (filter by channel or by
//! principal; scope global or regional). Unknown kinds are skipped, so newer nodes can add
//! kinds without breaking older ones mid-upgrade.

use broker_core::{ChannelName, InvalidationFilter, Message, MessageId, RegionName};
use bytes::Bytes;
use redis::Value;

/// A parsed stream entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entry {
    /// A published message.
    Message(Message),
    /// An administrator's invalidation.
    Invalidation(Invalidation),
}

/// An invalidation travelling through the streams.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Invalidation {
    pub(crate) origin: RegionName,
    pub(crate) node: String,
    pub(crate) global: bool,
    pub(crate) filter: InvalidationFilter,
}

impl Entry {
    pub(crate) fn origin(&self) -> &RegionName {
        match self {
            Entry::Message(m) => &m.origin,
            Entry::Invalidation(i) => &i.origin,
        }
    }

    /// Whether a region importing from the entry's origin should copy it.
    pub(crate) fn exported(&self) -> bool {
        match self {
            Entry::Message(_) => true,
            Entry::Invalidation(i) => i.global,
        }
    }

    /// The XADD field/value list.
    pub(crate) fn fields(&self) -> Vec<(&'static str, Bytes)> {
        match self {
            Entry::Message(m) if packable(m.id.as_str()) => {
                let (id, origin, channel) = (m.id.as_str(), m.origin.as_str(), m.channel.as_str());
                let mut packed =
                    Vec::with_capacity(id.len() + origin.len() + channel.len() + 3 + m.data.len());
                for part in [id, origin, channel] {
                    packed.extend_from_slice(part.as_bytes());
                    packed.push(b' ');
                }
                packed.extend_from_slice(&m.data);
                vec![("m", Bytes::from(packed))]
            }
            Entry::Message(m) => vec![
                ("k", Bytes::from_static(b"m")),
                ("id", Bytes::copy_from_slice(m.id.as_str().as_bytes())),
                ("o", Bytes::copy_from_slice(m.origin.as_str().as_bytes())),
                ("c", Bytes::copy_from_slice(m.channel.as_str().as_bytes())),
                ("d", m.data.clone()),
            ],
            Entry::Invalidation(i) => {
                let (f, v) = match &i.filter {
                    InvalidationFilter::Channel(c) => ("c", c.as_str().to_owned()),
                    InvalidationFilter::Principal(p) => ("p", p.clone()),
                    other => {
                        // A filter added to the core but not to this format yet stays local.
                        tracing::warn!(?other, "invalidation filter not replicable");
                        ("?", String::new())
                    }
                };
                vec![
                    ("k", Bytes::from_static(b"i")),
                    ("o", Bytes::copy_from_slice(i.origin.as_str().as_bytes())),
                    ("n", Bytes::from(i.node.clone())),
                    ("s", Bytes::from_static(if i.global { b"g" } else { b"r" })),
                    ("f", Bytes::from_static(f.as_bytes())),
                    ("v", Bytes::from(v)),
                ]
            }
        }
    }

    /// Parses a field list; `None` for an entry of an unknown kind or a malformed one.
    pub(crate) fn parse(mut fields: Vec<Value>) -> Option<Entry> {
        if let [Value::BulkString(k), Value::BulkString(_)] = &fields[..] {
            if k == b"m" {
                let Some(Value::BulkString(packed)) = fields.pop() else {
                    return None;
                };
                return unpack(Bytes::from(packed)).map(Entry::Message);
            }
        }
        let get = |name: &str| -> Option<&[u8]> {
            fields
                .chunks_exact(2)
                .find_map(|kv| match (&kv[0], &kv[1]) {
                    (Value::BulkString(k), Value::BulkString(v)) if k == name.as_bytes() => {
                        Some(v.as_slice())
                    }
                    _ => None,
                })
        };
        let text = |name: &str| get(name).and_then(|b| std::str::from_utf8(b).ok());
        let origin = RegionName::parse(text("o")?).ok()?;
        match get("k")? {
            b"m" => Some(Entry::Message(Message {
                channel: ChannelName::parse(text("c")?).ok()?,
                data: Bytes::copy_from_slice(get("d")?),
                id: MessageId::new(text("id")?),
                origin,
            })),
            b"i" => {
                let value = text("v")?;
                let filter = match get("f")? {
                    b"c" => InvalidationFilter::Channel(ChannelName::parse(value).ok()?),
                    b"p" => InvalidationFilter::Principal(value.to_owned()),
                    _ => return None,
                };
                Some(Entry::Invalidation(Invalidation {
                    origin,
                    node: text("n")?.to_owned(),
                    global: get("s")? == b"g",
                    filter,
                }))
            }
            _ => None,
        }
    }
}

/// Whether a message id can lead a packed `m` field: the parser splits at its first space.
fn packable(id: &str) -> bool {
    !id.is_empty() && !id.contains(' ')
}

/// Parses a packed message, `<id> <origin> <channel> <json>`, sharing `packed`'s bytes for the
/// payload.
fn unpack(packed: Bytes) -> Option<Message> {
    let mut parts = packed.splitn(4, |b| *b == b' ');
    let id = std::str::from_utf8(parts.next()?).ok()?;
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let channel = std::str::from_utf8(parts.next()?).ok()?;
    let data_at = id.len() + origin.len() + channel.len() + 3;
    if data_at > packed.len() || id.is_empty() {
        return None;
    }
    Some(Message {
        channel: ChannelName::parse(channel).ok()?,
        id: MessageId::new(id),
        origin: RegionName::parse(origin).ok()?,
        data: packed.slice(data_at..),
    })
}

/// A stream entry id (`<ms>-<seq>`), ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of an XREAD or XRANGE reply: its id and fields (parsed lazily by the caller).
pub(crate) struct RawEntry {
    pub(crate) id: StreamId,
    pub(crate) fields: Vec<Value>,
}

/// Parses the entries of an `XRANGE`/`XREVRANGE` reply: `[[id, [f, v, …]], …]`.
pub(crate) fn parse_range(reply: Value) -> Result<Vec<RawEntry>, String> {
    let Value::Array(items) = reply else {
        return match reply {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("unexpected range reply {other:?}")),
        };
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut pair) = item else {
                return Err("entry is not an array".to_owned());
            };
            if pair.len() != 2 {
                return Err("entry is not [id, fields]".to_owned());
            }
            let fields = match pair.pop() {
                Some(Value::Array(f)) => f,
                Some(Value::Nil) => Vec::new(),
                other => return Err(format!("unexpected fields {other:?}")),
            };
            let id = match pair.pop() {
                Some(Value::BulkString(b)) => {
                    std::str::from_utf8(&b).ok().and_then(StreamId::parse)
                }
                Some(Value::SimpleString(s)) => StreamId::parse(&s),
                _ => None,
            }
            .ok_or("bad entry id")?;
            Ok(RawEntry { id, fields })
        })
        .collect()
}

/// Parses an `XREAD` reply for one stream: `nil` (timed out) or `[[key, entries]]`.
pub(crate) fn parse_xread(reply: Value) -> Result<Vec<RawEntry>, String> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(mut streams) => match streams.pop() {
            None => Ok(Vec::new()),
            Some(Value::Array(mut kv)) if kv.len() == 2 => {
                parse_range(kv.pop().unwrap_or(Value::Nil))
            }
            Some(other) => Err(format!("unexpected stream reply {other:?}")),
        },
        // RESP3 servers answer with a map of key → entries.
        Value::Map(mut streams) => match streams.pop() {
            None => Ok(Vec::new()),
            Some((_, entries)) => parse_range(entries),
        },
        other => Err(format!("unexpected XREAD reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn as_values(fields: &[(&'static str, Bytes)]) -> Vec<Value> {
        fields
            .iter()
            .flat_map(|(k, v)| [bulk(k.as_bytes()), bulk(v)])
            .collect()
    }

    #[test]
    fn entries_round_trip() {
        let m = Entry::Message(Message {
            channel: ChannelName::parse("tech").unwrap(),
            data: Bytes::from_static(br#"{"a":1}"#),
            id: MessageId::new("abc"),
            origin: RegionName::parse("us").unwrap(),
        });
        assert_eq!(Entry::parse(as_values(&m.fields())), Some(m.clone()));
        assert!(m.exported());
        for (filter, global) in [
            (
                InvalidationFilter::Channel(ChannelName::parse("tech").unwrap()),
                true,
            ),
            (InvalidationFilter::Principal("app".into()), false),
        ] {
            let i = Entry::Invalidation(Invalidation {
                origin: RegionName::parse("eu").unwrap(),
                node: "n1".into(),
                global,
                filter,
            });
            assert_eq!(Entry::parse(as_values(&i.fields())), Some(i.clone()));
            assert_eq!(i.exported(), global);
        }
    }

    #[test]
    fn messages_are_one_packed_field_and_the_five_field_form_is_still_read() {
        let m = Message {
            channel: ChannelName::parse("tech").unwrap(),
            data: Bytes::from_static(br#"{"a":"x y z"}"#),
            id: MessageId::new("0193a0c2f1e8a3f94c2b7d1e0a5500000001"),
            origin: RegionName::parse("us").unwrap(),
        };
        let fields = Entry::Message(m.clone()).fields();
        assert_eq!(
            fields,
            vec![(
                "m",
                Bytes::from_static(
                    br#"0193a0c2f1e8a3f94c2b7d1e0a5500000001 us tech {"a":"x y z"}"#
                )
            )]
        );
        let legacy = vec![
            bulk(b"k"),
            bulk(b"m"),
            bulk(b"id"),
            bulk(m.id.as_str().as_bytes()),
            bulk(b"o"),
            bulk(b"us"),
            bulk(b"c"),
            bulk(b"tech"),
            bulk(br#"d"#),
            bulk(&m.data),
        ];
        assert_eq!(Entry::parse(legacy), Some(Entry::Message(m.clone())));
        // An id the packed form cannot carry is written the five-field way.
        let odd = Message {
            id: MessageId::new("with space"),
            ..m
        };
        let fields = Entry::Message(odd.clone()).fields();
        assert_eq!(fields.len(), 5);
        assert_eq!(Entry::parse(as_values(&fields)), Some(Entry::Message(odd)));
    }

    #[test]
    fn malformed_and_unknown_entries_are_skipped() {
        assert_eq!(
            Entry::parse(vec![bulk(b"k"), bulk(b"z"), bulk(b"o"), bulk(b"us")]),
            None
        );
        assert_eq!(
            Entry::parse(vec![bulk(b"k"), bulk(b"m"), bulk(b"o"), bulk(b"us")]),
            None
        );
        assert_eq!(Entry::parse(vec![bulk(b"k")]), None);
        let bad_channel = vec![
            bulk(b"k"),
            bulk(b"m"),
            bulk(b"o"),
            bulk(b"us"),
            bulk(b"id"),
            bulk(b"x"),
            bulk(b"c"),
            bulk(b"has space"),
            bulk(b"d"),
            bulk(b"1"),
        ];
        assert_eq!(Entry::parse(bad_channel), None);
        for packed in [
            &b"id us t\x01ch 1"[..],
            b"id us tech",
            b" us tech 1",
            b"id \xff tech 1",
        ] {
            assert_eq!(
                Entry::parse(vec![bulk(b"m"), bulk(packed)]),
                None,
                "{packed:?}"
            );
        }
    }

    #[test]
    fn parses_xread_replies() {
        let entry = Value::Array(vec![
            bulk(b"17-3"),
            Value::Array(vec![bulk(b"k"), bulk(b"m")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"key"),
            Value::Array(vec![entry]),
        ])]);
        let got = parse_xread(reply).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, StreamId { ms: 17, seq: 3 });
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        assert!(parse_xread(Value::Int(3)).is_err());
        assert!(StreamId::parse("1-2") < StreamId::parse("1-10"));
        assert!(StreamId::parse("2-0") > StreamId::parse("1-10"));
        assert_eq!(StreamId::parse("x"), None);
    }
}
