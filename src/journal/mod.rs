//! The durable outbox: an append-only journal file.
//!
//! Every accepted at-least-once message is appended (with its id) before
//! `send` returns; acknowledgements and drops are appended as they happen.
//! Opening the file replays it: what was accepted and neither acknowledged
//! nor dropped is handed back, in id order, to be sent first.
//!
//! Record: `len: u32 LE | crc32(body): u32 LE | body`, body = `kind: u8 |
//! id: u64 LE | payload`. A message with a time to live is recorded with its
//! deadline as wall-clock time (the payload starts with it, in microseconds
//! since the Unix epoch): a start after the deadline drops it instead of
//! sending it late, an earlier one keeps the time left.
//!
//! The journal also keeps the at-least-once *run* its messages belong to (a
//! RUN record, first in a new file and rewritten by compaction): a client
//! restarted on it continues that run, its ids after the journal's last id.
//!
//! Version 2 of the format (its magic ends in `2`) adds these record kinds.
//! A version-1 file is rewritten as version 2 when it is opened, so an
//! older build refuses a file it cannot read instead of cutting records it
//! does not know as a torn tail. A record that is short, fails its checksum or is
//! otherwise malformed marks a torn tail (a crash in the middle of a write):
//! it and everything after it are cut off with a warning. A failed append is
//! cut back at once, so the file never holds garbage followed by good records.
//! When the file is mostly dead records it is rewritten (temp file, fsync,
//! rename, fsync of the directory). The temp file is created new beside the
//! journal under a name unique to its file name, the process and the
//! attempt, locked before anything is written, and removed on failure: it
//! never touches another file, whatever the journals are called.
//!
//! Where to look: [`format`](mod@format) is the record encoding (magic,
//! record kinds, checksum, parsing); [`recover`] opens a journal and
//! replays it; [`file`](mod@file) appends, acknowledges, drops and syncs;
//! [`compact`] rewrites a mostly dead file.

mod compact;
mod file;
mod format;
mod recover;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// When the journal is forced to disk (`fdatasync`).
///
/// Under every policy a record is handed to the operating system before
/// `send` returns, so a crash or kill of the *process* loses nothing. The
/// policy bounds what a power loss or kernel crash can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalSync {
    /// Sync before every `send` returns: nothing accepted is ever lost, at
    /// the cost of one disk flush per message. A message whose sync fails
    /// is refused ([`Error::Journal`](crate::Error::Journal), handed back)
    /// and cut from the journal again, so no later start sends it.
    EveryMessage,
    /// Sync at most this long after a write: a power loss takes at most
    /// this much of the latest messages.
    Interval(Duration),
    /// Leave it to the operating system.
    Never,
}

pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    /// Live message ids and their record sizes.
    live: BTreeMap<u64, u64>,
    live_bytes: u64,
    acked: u64,
    last_id: u64,
    /// The run its messages belong to.
    run: u64,
    sync: JournalSync,
    last_sync: Instant,
    dirty: bool,
    compact_at: u64,
    /// After a failed compaction: do not try again below this size.
    retry_at: u64,
    /// An append failed and could not be cut back: refuse further appends.
    broken: Option<String>,
    /// Tests: every fsync fails.
    #[cfg(test)]
    fail_sync: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("len", &self.len)
            .field("live", &self.live.len())
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

/// What a journal held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Messages accepted and not acknowledged, in id order: id, text, and
    /// the deadline of those sent with a time to live.
    pub(crate) messages: Vec<(u64, String, Option<SystemTime>)>,
    /// Where a torn or corrupt tail was cut off, and why.
    pub(crate) cut: Option<(u64, String)>,
}

/// Helpers shared by the tests of the journal's files.
#[cfg(test)]
mod testing {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A journal path in a directory made for it now: never one an
    /// earlier run left behind (process ids are reused).
    pub(super) fn temp_path(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        loop {
            let dir = std::env::temp_dir().join(format!(
                "longlink-unit-{}-{}-{:016x}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                fastrand::u64(..)
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => return dir.join("journal"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating {dir:?}: {e}"),
            }
        }
    }

    pub(super) fn ids(r: &Replay) -> Vec<u64> {
        r.messages.iter().map(|(id, ..)| *id).collect()
    }

    /// Appends 1000 messages of 100 bytes, acknowledging all but the last
    /// three as it goes, with compaction from 4 KiB on.
    pub(super) fn churn(j: &mut Journal) {
        j.set_compact_at(4096);
        let text = "x".repeat(100);
        for id in 1..=1000 {
            j.append(id, &text, None, Instant::now()).unwrap();
            if id % 10 == 0 {
                j.ack(id - 3);
            }
        }
    }
}

/// A new at-least-once run id: random, nonzero, exact in JavaScript (< 2^53).
pub(crate) fn new_run() -> u64 {
    fastrand::u64(1..1 << 53)
}

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn run_ids_are_nonzero_and_exact_in_javascript() {
        for _ in 0..1000 {
            let r = new_run();
            assert!(r > 0 && r < 1 << 53, "{r}");
        }
    }
}
