//! Identifier newtypes: channels, regions, connections and messages.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::InvalidName;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// A validated channel name: 1–256 bytes of printable ASCII without whitespace.
///
/// Cheap to clone (shared `Arc<str>`), because every subscription and message holds one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Parses a channel name, rejecting empty, over-long or non-printable names.
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        validate_token(name, MAX_CHANNEL_LEN)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Longest region name accepted, in bytes.
pub const MAX_REGION_LEN: usize = 64;

/// The name of a region (for example `us-west-2`), carried by every message as its origin.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionName(Arc<str>);

impl RegionName {
    /// Parses a region name: 1–64 bytes of printable ASCII without whitespace.
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        validate_token(name, MAX_REGION_LEN)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RegionName {
    /// `local`, the region of a broker that replicates nowhere.
    fn default() -> Self {
        Self(Arc::from("local"))
    }
}

impl fmt::Debug for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RegionName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_token(name: &str, max: usize) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.len() > max {
        return Err(InvalidName::TooLong { max });
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidName::BadCharacter);
    }
    Ok(())
}

/// Identifies one client connection on this node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A message identifier, unique across every node and region.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Arc<str>);

impl MessageId {
    /// Wraps an identifier received from elsewhere (a replication stream, a test).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Generates [`MessageId`]s that are unique without coordination.
///
/// An id is 36 hex digits: 48 bits of wall-clock milliseconds, 64 random bits drawn once per
/// generator (per process), and a 32-bit counter. Two generators collide only if they draw the
/// same 64 random bits, and one generator only repeats after 2^32 ids in one millisecond.
/// The leading timestamp keeps ids of one node roughly time-ordered, which helps when reading logs.
#[derive(Debug)]
pub struct MessageIdGen {
    node: u64,
    counter: AtomicU32,
}

impl MessageIdGen {
    /// A generator with a fresh random node component.
    pub fn new() -> Self {
        Self {
            node: random_u64(),
            counter: AtomicU32::new(0),
        }
    }

    /// The next id, stamped with `now`.
    pub fn next_id(&self, now: SystemTime) -> MessageId {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Hex by hand: `format!` costs more than the rest of a publish's bookkeeping.
        let mut id = [0u8; 36];
        hex(&mut id[..12], ms & 0xffff_ffff_ffff);
        hex(&mut id[12..28], self.node);
        hex(&mut id[28..], u64::from(n));
        // Only ASCII hex digits were written.
        let id = std::str::from_utf8(&id).expect("hex digits are ASCII");
        MessageId(Arc::from(id))
    }
}

/// Writes the low `out.len()` hex digits of `v`, most significant first, lowercase.
fn hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl Default for MessageIdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands out [`ConnectionId`]s, unique for the life of one process.
#[derive(Debug, Default)]
pub(crate) struct ConnectionIdGen(AtomicU64);

impl ConnectionIdGen {
    pub(crate) fn next_id(&self) -> ConnectionId {
        ConnectionId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// 64 bits from the operating system's random source.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // The OS random source only fails on exotic platforms at early boot; a clock-derived
    // fallback keeps ids unique enough there rather than refusing to start.
    if getrandom::fill(&mut buf).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ (std::process::id() as u64).rotate_left(32);
    }
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_fixed_width_hex_of_time_node_counter() {
        let ids = MessageIdGen::new();
        let t = UNIX_EPOCH + std::time::Duration::from_millis(0x0193_a0c2_f1e8);
        let a = ids.next_id(t);
        let b = ids.next_id(t);
        assert_eq!(a.as_str().len(), 36);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&a.as_str()[..12], "0193a0c2f1e8");
        assert_eq!(&a.as_str()[12..28], &format!("{:016x}", ids.node));
        assert_eq!(&a.as_str()[28..], "00000000");
        assert_eq!(&b.as_str()[28..], "00000001");
    }

    #[test]
    fn channel_names_are_validated() {
        assert!(ChannelName::parse("tech").is_ok());
        assert!(ChannelName::parse("a/b:c-d_e.f").is_ok());
        assert_eq!(ChannelName::parse(""), Err(InvalidName::Empty));
        assert_eq!(
            ChannelName::parse("has space"),
            Err(InvalidName::BadCharacter)
        );
        assert_eq!(ChannelName::parse("tab\t"), Err(InvalidName::BadCharacter));
        assert_eq!(
            ChannelName::parse("caf\u{e9}"),
            Err(InvalidName::BadCharacter)
        );
        assert!(ChannelName::parse(&"x".repeat(256)).is_ok());
        assert_eq!(
            ChannelName::parse(&"x".repeat(257)),
            Err(InvalidName::TooLong { max: 256 })
        );
    }

    #[test]
    fn message_ids_are_unique_across_generators() {
        let now = SystemTime::now();
        let (a, b) = (MessageIdGen::new(), MessageIdGen::new());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next_id(now)));
            assert!(seen.insert(b.next_id(now)));
        }
        assert_eq!(a.next_id(now).as_str().len(), 36);
    }
}
