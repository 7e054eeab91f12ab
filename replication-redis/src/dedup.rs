//! A bounded window of recently delivered message ids.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use broker_core::MessageId;

/// A fast multiply-and-rotate hasher for message ids. Not resistant to chosen collisions, which
/// is fine here: ids come from this deployment's own nodes through Redis, never from clients,
/// and SipHash over every delivered id was a visible share of the stream reader's time.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            // chunks_exact yields 8-byte slices.
            let word = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        // Mix the high bits down: hashbrown takes its bucket from the low bits and its tag
        // from the top seven.
        self.0 ^ (self.0 >> 29)
    }
}

/// Remembers the last `capacity` message ids; older ones are forgotten first.
///
/// Bounded by `capacity` entries (about 100 bytes each); once full, inserting evicts the oldest.
#[derive(Debug)]
pub(crate) struct Dedup {
    order: VecDeque<MessageId>,
    seen: HashSet<MessageId, BuildHasherDefault<IdHasher>>,
    capacity: usize,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            seen: HashSet::default(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; returns false if it was already in the window (a duplicate).
    pub(crate) fn insert(&mut self, id: &MessageId) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.seen.insert(id.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats_within_the_window_and_forgets_the_oldest() {
        let mut d = Dedup::new(2);
        let (a, b, c) = (
            MessageId::new("a"),
            MessageId::new("b"),
            MessageId::new("c"),
        );
        assert!(d.insert(&a));
        assert!(!d.insert(&a));
        assert!(d.insert(&b));
        assert!(d.insert(&c));
        assert!(d.insert(&a), "a fell out of the window");
        assert!(!d.insert(&c));
    }
}
