//! Error types, one per operation, and the wire error codes they map to.

use std::fmt;

/// The error codes of the wire protocol (`{"type":"error","code":…}`), shared by every transport.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Missing, unknown or expired credential.
    Unauthorized,
    /// The credential is valid but its role may not do this.
    Forbidden,
    /// The filter policy does not allow this channel.
    ChannelNotAllowed,
    /// The channel name is malformed.
    InvalidChannel,
    /// Malformed frame: bad JSON, unknown type, missing field, binary frame.
    BadRequest,
    /// The payload is over the configured limit.
    PayloadTooLarge,
    /// The connection already holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The connection publishes faster than its configured rate.
    RateLimited,
    /// A dependency (the replication store) is unreachable; retrying later may succeed.
    Unavailable,
    /// A bug or an unexpected state on the server.
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ChannelNotAllowed => "channel_not_allowed",
            Self::InvalidChannel => "invalid_channel",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code on the HTTP endpoints.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden | Self::ChannelNotAllowed => 403,
            Self::InvalidChannel | Self::BadRequest | Self::TooManySubscriptions => 400,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anything that can be reported to a client as a wire error.
pub trait WireError: std::error::Error {
    /// The wire code for this error.
    fn code(&self) -> ErrorCode;
}

/// Why a channel or region name was rejected.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("name is longer than {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The name holds whitespace, control or non-ASCII characters.
    #[error("name must be printable ASCII without whitespace")]
    BadCharacter,
}

/// Why a credential was not accepted. Messages never include the credential itself.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was presented.
    #[error("missing credential: send an x-api-key header, a bearer token or ?api_key=")]
    Missing,
    /// The credential matches no known key or token.
    #[error("unknown credential")]
    Unknown,
    /// The credential matched a key that has expired.
    #[error("credential expired")]
    Expired,
    /// The authentication backend failed.
    #[error("authentication backend unavailable: {0}")]
    Backend(String),
}

impl WireError for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Backend(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// A filter policy's refusal.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The channel is not on the allow-list.
    #[error("channel is not allowed")]
    ChannelNotAllowed,
    /// The principal may not act on this channel.
    #[error("not permitted for this credential")]
    Forbidden,
}

impl WireError for Denied {
    fn code(&self) -> ErrorCode {
        match self {
            Self::ChannelNotAllowed => ErrorCode::ChannelNotAllowed,
            Self::Forbidden => ErrorCode::Forbidden,
        }
    }
}

/// Why a subscribe failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The channel name is malformed.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] InvalidName),
    /// The filter policy refused.
    #[error("{0}")]
    Denied(#[from] Denied),
    /// The connection already has the maximum number of subscriptions.
    #[error("too many subscriptions: at most {max} per connection")]
    TooManySubscriptions {
        /// The configured limit.
        max: usize,
    },
    /// The connection is closing.
    #[error("connection is closing")]
    Closed,
}

impl WireError for SubscribeError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidChannel(_) => ErrorCode::InvalidChannel,
            Self::Denied(d) => d.code(),
            Self::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            Self::Closed => ErrorCode::Unavailable,
        }
    }
}

/// Why an unsubscribe failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsubscribeError {
    /// The channel name is malformed.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] InvalidName),
}

impl WireError for UnsubscribeError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidChannel(_) => ErrorCode::InvalidChannel,
        }
    }
}

/// A replication backend's failure.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The store is unreachable; nothing was appended and nothing was delivered.
    #[error("replication store unavailable: {0}")]
    Unavailable(String),
    /// The store answered in an unexpected way.
    #[error("replication failed: {0}")]
    Internal(String),
}

impl WireError for ReplicationError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Why a publish failed. In every case nothing was delivered to anyone.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel name is malformed.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] InvalidName),
    /// The filter policy refused.
    #[error("{0}")]
    Denied(#[from] Denied),
    /// The payload is over the limit.
    #[error("payload is {size} bytes, over the limit of {max}")]
    PayloadTooLarge {
        /// Size of the rejected payload, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        max: usize,
    },
    /// The connection is over its publish rate.
    #[error("publish rate exceeded")]
    RateLimited,
    /// The replication backend refused or failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

impl WireError for PublishError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidChannel(_) => ErrorCode::InvalidChannel,
            Self::Denied(d) => d.code(),
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::Replication(e) => e.code(),
        }
    }
}

/// Why an invalidation failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidateError {
    /// Only administrators may invalidate subscriptions.
    #[error("only an administrator may invalidate subscriptions")]
    Forbidden,
    /// The channel name is malformed.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] InvalidName),
    /// Subscriptions on this node were ended, but the invalidation could not be sent to the
    /// other nodes and regions.
    #[error("ended {local} subscriptions here, but could not replicate: {source}")]
    Replication {
        /// Subscriptions ended on this node.
        local: usize,
        /// The replication failure.
        source: ReplicationError,
    },
}

impl WireError for InvalidateError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden => ErrorCode::Forbidden,
            Self::InvalidChannel(_) => ErrorCode::InvalidChannel,
            Self::Replication { source, .. } => source.code(),
        }
    }
}

/// Why a client frame could not be decoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// The request id, when the frame was readable far enough to find one.
    pub id: Option<String>,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with a client frame.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Not a JSON object, or not valid JSON.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// A binary frame where text was expected.
    #[error("binary frames are not accepted; send JSON in text frames")]
    Binary,
    /// The `type` field names no known request.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A required field is missing.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// The payload is over the limit.
    #[error("payload is {size} bytes, over the limit of {max}")]
    PayloadTooLarge {
        /// Size of the rejected payload, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        max: usize,
    },
}

impl WireError for DecodeError {
    fn code(&self) -> ErrorCode {
        match self.kind {
            DecodeErrorKind::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}
