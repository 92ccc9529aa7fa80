//! The on-disk format: magic (version), record kinds, encoding, parsing
//! and the checksum. Pure: no file is touched here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) const MAGIC: &[u8; 16] = b"longlink-jrnl-2\n";
/// Version 1: no record kind with a deadline. Read, then rewritten as version 2.
pub(super) const MAGIC_V1: &[u8; 16] = b"longlink-jrnl-1\n";
const HEADER: usize = 8;
const BODY_MIN: usize = 9;
/// Larger than any message we would write: a length beyond it is corruption.
const RECORD_MAX: usize = 1 << 30;

pub(super) const MSG: u8 = 1;
/// Every id up to this one is acknowledged.
pub(super) const ACK: u8 = 2;
/// This id will never be sent (expired, dropped, refused).
pub(super) const DROP: u8 = 3;
/// Every id up to this one has been used (written by compaction).
pub(super) const BASE: u8 = 4;
/// A message with a time to live: payload = deadline (µs since the Unix
/// epoch, u64 LE) | text.
pub(super) const MSG_TTL: u8 = 5;
/// The at-least-once run of this journal's messages (the id field holds it).
pub(super) const RUN: u8 = 6;
const DEADLINE: usize = 8;

pub(super) fn record(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_MIN + payload.len());
    body.push(kind);
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(HEADER + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

pub(super) struct Record<'a> {
    pub(super) kind: u8,
    pub(super) id: u64,
    /// Everything after the id, as written.
    pub(super) payload: &'a [u8],
    /// Of a message with a time to live (µs since the Unix epoch).
    pub(super) deadline: Option<u64>,
    pub(super) text: &'a str,
    pub(super) size: u64,
}

pub(super) fn ttl_payload(deadline: SystemTime, text: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(DEADLINE + text.len());
    p.extend_from_slice(&to_micros(deadline).to_le_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// Microseconds since the Unix epoch (0 before it).
fn to_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A deadline the platform cannot represent is taken as passed: a message
/// is never sent late.
pub(super) fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(us))
        .unwrap_or(UNIX_EPOCH)
}

/// Parse after the magic; returns the good records, where they end, and
/// why parsing stopped early (a torn or corrupt tail), if it did.
pub(super) fn parse(bytes: &[u8]) -> (Vec<Record<'_>>, usize, Option<String>) {
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            return (out, at, Some("truncated record header".into()));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if !(BODY_MIN..=RECORD_MAX).contains(&len) {
            return (out, at, Some(format!("impossible record length {len}")));
        }
        if rest.len() < HEADER + len {
            return (out, at, Some("truncated record".into()));
        }
        let body = &rest[HEADER..HEADER + len];
        if crc32(body) != crc {
            return (out, at, Some("checksum mismatch".into()));
        }
        let kind = body[0];
        let id = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        let payload = &body[9..];
        let (deadline, text) = match kind {
            MSG_TTL if payload.len() < DEADLINE => {
                return (out, at, Some("message record too short".into()));
            }
            MSG_TTL => {
                let (d, text) = payload.split_at(DEADLINE);
                let d = u64::from_le_bytes(d.try_into().expect("8 bytes"));
                (Some(d), text)
            }
            _ => (None, payload),
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return (out, at, Some("message is not UTF-8".into()));
        };
        if !matches!(kind, MSG | ACK | DROP | BASE | MSG_TTL | RUN) || id == 0 {
            return (out, at, Some(format!("unknown record kind {kind}")));
        }
        out.push(Record {
            kind,
            id,
            payload,
            deadline,
            text,
            size: (HEADER + len) as u64,
        });
        at += HEADER + len;
    }
    (out, at, None)
}

/// CRC-32 (IEEE 802.3), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
