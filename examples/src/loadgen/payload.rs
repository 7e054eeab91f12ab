//! The benchmark payload: one JSON object carrying the publish time, the publisher and a
//! sequence number, padded to the requested size. It is valid JSON (our broker requires it)
//! and plain bytes to NATS, so both brokers carry exactly the same payload.
//!
//! `{"t":1733240000123456789,"s":42,"p":3,"x":"xxxx…"}`: `t` is the publish time in nanoseconds
//! since the Unix epoch (the system clock, shared by every process on the machine), `s` counts
//! from 1 per publisher, `p` is the publisher's index.

use std::time::{SystemTime, UNIX_EPOCH};

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Publish time, nanoseconds since the Unix epoch.
    pub t_ns: u64,
    /// Sequence number within the publisher, from 1.
    pub seq: u64,
    /// The publisher's index.
    pub publisher: u32,
}

/// Smallest payload that always fits a stamp with the largest numbers and no padding.
pub const MIN_SIZE: usize = 80;

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Appends the payload for `stamp` to `out`, padded to exactly `size` bytes (or the unpadded
/// stamp when `size` is smaller than that).
pub fn write(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    let begin = out.len();
    out.extend_from_slice(b"{\"t\":");
    push_u64(out, stamp.t_ns);
    out.extend_from_slice(b",\"s\":");
    push_u64(out, stamp.seq);
    out.extend_from_slice(b",\"p\":");
    push_u64(out, u64::from(stamp.publisher));
    let written = out.len() - begin;
    // `,"x":""}` is 8 bytes.
    if written + 8 <= size {
        out.extend_from_slice(b",\"x\":\"");
        out.resize(begin + size - 2, b'x');
        out.extend_from_slice(b"\"}");
    } else {
        out.push(b'}');
    }
}

/// Reads the stamp at the start of a payload.
pub fn parse(payload: &[u8]) -> Option<Stamp> {
    let rest = payload.strip_prefix(b"{\"t\":")?;
    let (t_ns, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (seq, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(b",\"p\":")?;
    let (publisher, _) = take_u64(rest)?;
    Some(Stamp {
        t_ns,
        seq,
        publisher: u32::try_from(publisher).ok()?,
    })
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn take_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in &s[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, &s[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_the_requested_size() {
        let stamp = Stamp {
            t_ns: now_ns(),
            seq: 123_456,
            publisher: 7,
        };
        for size in [MIN_SIZE, 128, 1024] {
            let mut v = Vec::new();
            write(&mut v, stamp, size);
            assert_eq!(v.len(), size);
            assert_eq!(parse(&v), Some(stamp));
            let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(json["s"], 123_456);
        }
        let max = Stamp {
            t_ns: u64::MAX,
            seq: u64::MAX,
            publisher: u32::MAX,
        };
        let mut v = Vec::new();
        write(&mut v, max, MIN_SIZE);
        assert!(v.len() <= MIN_SIZE);
        assert_eq!(parse(&v), Some(max));
    }

    #[test]
    fn small_sizes_still_carry_the_stamp() {
        let s = Stamp {
            t_ns: 5,
            seq: 1,
            publisher: 0,
        };
        let mut v = Vec::new();
        write(&mut v, s, 4);
        assert_eq!(v, br#"{"t":5,"s":1,"p":0}"#);
        assert_eq!(parse(&v), Some(s));
    }

    #[test]
    fn rejects_foreign_payloads() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(br#"{"t":x}"#), None);
        assert_eq!(parse(br#"{"t":99999999999999999999999,"s":1,"p":0}"#), None);
    }
}
