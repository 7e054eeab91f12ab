//! A bounded window of recently delivered message ids.

use std::collections::{HashSet, VecDeque};

use broker_core::MessageId;

/// Remembers the last `capacity` message ids; older ones are forgotten first.
///
/// Bounded by `capacity` entries (about 100 bytes each); once full, inserting evicts the oldest.
#[derive(Debug)]
pub(crate) struct Dedup {
    order: VecDeque<MessageId>,
    seen: HashSet<MessageId>,
    capacity: usize,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            seen: HashSet::new(),
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
