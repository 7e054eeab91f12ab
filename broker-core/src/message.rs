//! The message model, and the shared envelope that carries one message to every subscriber.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::ids::{ChannelName, MessageId, RegionName};

/// One published message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// The channel it was published on.
    pub channel: ChannelName,
    /// The payload: one JSON value, exactly as the publisher sent it.
    pub data: Bytes,
    /// Unique across every node and region; used to drop duplicates.
    pub id: MessageId,
    /// The region where it was published.
    pub origin: RegionName,
}

/// How many wire dialects can cache their encoding of one message. Each [`Codec`] picks a slot.
///
/// [`Codec`]: crate::codec::Codec
pub const ENCODING_SLOTS: usize = 4;

/// A message on its way to subscribers, shared by all of them through an `Arc`.
///
/// Each dialect encodes the message at most once per publish (see [`Envelope::encoded`]); every
/// subscriber's queue then holds a clone of the same `Bytes`.
#[derive(Debug)]
pub struct Envelope {
    message: Message,
    encodings: [OnceLock<Bytes>; ENCODING_SLOTS],
}

impl Envelope {
    /// Wraps a message.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            encodings: Default::default(),
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message encoded by the dialect owning `slot`, computed on first use.
    ///
    /// # Panics
    /// If `slot >= ENCODING_SLOTS`, which is a bug in the codec, not bad input.
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.encoded_ref(slot, encode).clone()
    }

    /// Like [`Envelope::encoded`], but borrowed: no reference count is touched, which counts
    /// when one message is written to thousands of sockets.
    ///
    /// # Panics
    /// If `slot >= ENCODING_SLOTS`, which is a bug in the codec, not bad input.
    pub fn encoded_ref(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> &Bytes {
        self.encodings[slot].get_or_init(|| encode(&self.message))
    }
}
