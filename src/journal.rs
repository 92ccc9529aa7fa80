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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

const MAGIC: &[u8; 16] = b"longlink-jrnl-2\n";
/// Version 1: no record kind with a deadline. Read, then rewritten as version 2.
const MAGIC_V1: &[u8; 16] = b"longlink-jrnl-1\n";
const HEADER: usize = 8;
const BODY_MIN: usize = 9;
/// Larger than any message we would write: a length beyond it is corruption.
const RECORD_MAX: usize = 1 << 30;

const MSG: u8 = 1;
/// Every id up to this one is acknowledged.
const ACK: u8 = 2;
/// This id will never be sent (expired, dropped, refused).
const DROP: u8 = 3;
/// Every id up to this one has been used (written by compaction).
const BASE: u8 = 4;
/// A message with a time to live: payload = deadline (µs since the Unix
/// epoch, u64 LE) | text.
const MSG_TTL: u8 = 5;
/// The at-least-once run of this journal's messages (the id field holds it).
const RUN: u8 = 6;
const DEADLINE: usize = 8;

/// Rewrite the file when it is at least this large and mostly dead.
const COMPACT_AT: u64 = 1 << 20;

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

impl Journal {
    /// Opens (or creates) the journal at `path`, takes an exclusive lock on
    /// it and replays it.
    pub(crate) fn open(path: &Path, sync: JournalSync) -> io::Result<(Journal, Replay)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "the journal is in use by another client or process",
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut j = Journal {
            file,
            path: path.to_owned(),
            len: bytes.len() as u64,
            live: BTreeMap::new(),
            live_bytes: 0,
            acked: 0,
            last_id: 0,
            run: 0,
            sync,
            last_sync: Instant::now(),
            dirty: false,
            compact_at: COMPACT_AT,
            retry_at: 0,
            broken: None,
            #[cfg(test)]
            fail_sync: false,
        };
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
            // New, or a crash while creating it.
            j.run = crate::sequence::new_run();
            j.file.set_len(0)?;
            j.file.write_all(MAGIC)?;
            j.file.write_all(&record(RUN, j.run, &[]))?;
            j.file.sync_all()?;
            sync_dir(path);
            j.len = j.file.metadata()?.len();
            return Ok((j, Replay::default()));
        }
        let v1 = bytes.starts_with(MAGIC_V1);
        if !bytes.starts_with(MAGIC) && !v1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a longlink journal (refusing to overwrite it)",
            ));
        }
        let (records, end, why) = parse(&bytes);
        let mut texts: BTreeMap<u64, (String, Option<SystemTime>)> = BTreeMap::new();
        for r in records {
            if r.kind == RUN {
                j.run = r.id;
                continue;
            }
            j.last_id = j.last_id.max(r.id);
            match r.kind {
                MSG | MSG_TTL if r.id > j.acked => {
                    let deadline = r.deadline.map(from_micros);
                    texts.insert(r.id, (r.text.to_owned(), deadline));
                    j.live.insert(r.id, r.size);
                    j.live_bytes += r.size;
                }
                ACK => j.apply_ack(r.id, &mut texts),
                DROP => {
                    texts.remove(&r.id);
                    j.forget(r.id);
                }
                _ => {}
            }
        }
        let mut replay = Replay::default();
        if let Some(why) = why {
            log::warn!(
                "longlink: journal {}: cut a torn tail at byte {end} of {} ({why})",
                path.display(),
                bytes.len()
            );
            j.file.set_len(end as u64)?;
            j.file.sync_all()?;
            j.len = end as u64;
            replay.cut = Some((end as u64, why));
        }
        let has_run = j.run != 0;
        if !has_run {
            j.run = crate::sequence::new_run();
        }
        if v1 {
            j.compact().map_err(|e| {
                io::Error::new(e.kind(), format!("rewriting a version 1 journal: {e}"))
            })?;
        }
        if !has_run && !v1 {
            j.write(RUN, j.run, &[])?;
            j.file.sync_data()?;
        }
        replay.messages = texts
            .into_iter()
            .map(|(id, (text, deadline))| (id, text, deadline))
            .collect();
        Ok((j, replay))
    }

    /// The at-least-once run of this journal's messages.
    pub(crate) fn run(&self) -> u64 {
        self.run
    }

    /// The next unused message id.
    pub(crate) fn next_id(&self) -> u64 {
        self.last_id + 1
    }

    /// Appends an accepted message; synced according to the policy. Under
    /// [`JournalSync::EveryMessage`] a failed sync fails the append and the
    /// record is cut off again: the caller must refuse the message.
    /// `deadline`: the wall-clock end of its time to live, if it has one.
    pub(crate) fn append(
        &mut self,
        id: u64,
        text: &str,
        deadline: Option<SystemTime>,
        now: Instant,
    ) -> io::Result<()> {
        let start = self.len;
        let size = match deadline {
            None => self.write(MSG, id, text.as_bytes())?,
            Some(d) => self.write(MSG_TTL, id, &ttl_payload(d, text))?,
        };
        if self.sync == JournalSync::EveryMessage
            && let Err(e) = self.sync_data()
        {
            self.take_back(start, id);
            return Err(io::Error::new(
                e.kind(),
                format!("syncing the journal: {e}"),
            ));
        }
        self.last_id = self.last_id.max(id);
        self.live.insert(id, size);
        self.live_bytes += size;
        match self.sync {
            JournalSync::EveryMessage => {
                self.dirty = false;
                self.last_sync = now;
            }
            JournalSync::Interval(d) => {
                self.dirty = true;
                if now.saturating_duration_since(self.last_sync) >= d {
                    self.sync_now(now);
                }
            }
            JournalSync::Never => {}
        }
        Ok(())
    }

    /// Every id up to `upto` is acknowledged. Losing this record only means
    /// resending (which the server deduplicates), so it is never synced.
    pub(crate) fn ack(&mut self, upto: u64) {
        if upto <= self.acked {
            return;
        }
        if let Err(e) = self.write(ACK, upto, &[]) {
            log::warn!("longlink: journal: recording an acknowledgement failed: {e}");
        }
        let mut none: BTreeMap<u64, ()> = BTreeMap::new();
        self.apply_ack(upto, &mut none);
        self.maybe_compact();
    }

    /// Message `id` will never be sent (expired, dropped).
    pub(crate) fn drop_id(&mut self, id: u64) {
        if !self.live.contains_key(&id) {
            return;
        }
        if let Err(e) = self.write(DROP, id, &[]) {
            log::warn!("longlink: journal: recording a dropped message failed: {e}");
        }
        self.forget(id);
        self.maybe_compact();
    }

    /// When a pending sync is due (interval policy with unsynced writes).
    pub(crate) fn sync_due(&self) -> Option<Instant> {
        match self.sync {
            JournalSync::Interval(d) if self.dirty => Some(crate::time::after(self.last_sync, d)),
            _ => None,
        }
    }

    pub(crate) fn sync_if_due(&mut self, now: Instant) {
        if self.sync_due().is_some_and(|due| now >= due) {
            self.sync_now(now);
        }
    }

    /// At close: shrink the file to its header if nothing is left to send.
    pub(crate) fn compact_if_empty(&mut self) {
        if self.live.is_empty()
            && self.len > 4096
            && let Err(e) = self.compact()
        {
            log::warn!("longlink: journal: compaction at close failed: {e}");
        }
    }

    /// Flush to disk now whatever was written (at close).
    pub(crate) fn sync_pending(&mut self) {
        if self.dirty {
            self.sync_now(Instant::now());
        }
    }

    fn sync_now(&mut self, now: Instant) {
        if let Err(e) = self.sync_data() {
            log::warn!("longlink: journal: fsync failed: {e}");
        }
        self.dirty = false;
        self.last_sync = now;
    }

    fn sync_data(&self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_sync {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.file.sync_data()
    }

    /// A record appended from `start` could not be made durable: cut it
    /// off, so that no later start replays it. If the file cannot be cut,
    /// a DROP record stops the replay, and the journal refuses further
    /// appends.
    fn take_back(&mut self, start: u64, id: u64) {
        let cut = match self.file.set_len(start) {
            Ok(()) => {
                self.len = start;
                return;
            }
            Err(e) => e,
        };
        let dropped = self.write(DROP, id, &[]);
        let why = format!(
            "a record that could not be synced could not be cut back ({cut}){}",
            match &dropped {
                Ok(_) => String::new(),
                Err(e) =>
                    format!(" nor marked dropped ({e}): message {id} may be sent by the next start"),
            }
        );
        log::error!("longlink: journal {}: {why}", self.path.display());
        self.broken = Some(why);
    }

    fn apply_ack<T>(&mut self, upto: u64, texts: &mut BTreeMap<u64, T>) {
        self.acked = self.acked.max(upto);
        self.last_id = self.last_id.max(upto);
        let Some(first_kept) = upto.checked_add(1) else {
            self.live.clear();
            self.live_bytes = 0;
            texts.clear();
            return;
        };
        let keep = self.live.split_off(&first_kept);
        for size in self.live.values() {
            self.live_bytes -= size;
        }
        self.live = keep;
        *texts = texts.split_off(&first_kept);
    }

    fn forget(&mut self, id: u64) {
        if let Some(size) = self.live.remove(&id) {
            self.live_bytes -= size;
        }
    }

    /// Append one record; on failure cut the file back to where it was.
    fn write(&mut self, kind: u8, id: u64, payload: &[u8]) -> io::Result<u64> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        let rec = record(kind, id, payload);
        match self.file.write_all(&rec) {
            Ok(()) => {
                self.len += rec.len() as u64;
                Ok(rec.len() as u64)
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    let why = format!("a failed write could not be cut back: {cut}");
                    log::error!("longlink: journal {}: {why}", self.path.display());
                    self.broken = Some(why);
                }
                Err(e)
            }
        }
    }

    fn maybe_compact(&mut self) {
        let floor = self.compact_at.max(self.retry_at);
        if self.len < floor || self.len < 2 * self.live_bytes + MAGIC.len() as u64 {
            return;
        }
        match self.compact() {
            Ok(()) => self.retry_at = 0,
            Err(e) => {
                log::warn!("longlink: journal: compaction failed (will retry): {e}");
                // Try again only after it has grown as much again.
                self.retry_at = self.len.saturating_mul(2);
            }
        }
    }

    /// Rewrite the file with only the live messages and the id counter.
    fn compact(&mut self) -> io::Result<()> {
        let mut old = Vec::new();
        let mut f = File::open(&self.path)?;
        f.read_to_end(&mut old)?;
        let (records, _, _) = parse(&old);
        let mut out = Vec::with_capacity(self.live_bytes as usize + 64);
        out.extend_from_slice(MAGIC);
        if self.last_id > 0 {
            out.extend_from_slice(&record(BASE, self.last_id, &[]));
        }
        out.extend_from_slice(&record(RUN, self.run, &[]));
        for r in records {
            if matches!(r.kind, MSG | MSG_TTL) && self.live.contains_key(&r.id) {
                out.extend_from_slice(&record(r.kind, r.id, r.payload));
            }
        }
        let (tmp, mut t) = create_temp(&self.path)?;
        let written = (|| {
            t.try_lock().map_err(|e| match e {
                std::fs::TryLockError::WouldBlock => {
                    io::Error::new(io::ErrorKind::WouldBlock, "the new temp file is locked")
                }
                std::fs::TryLockError::Error(e) => e,
            })?;
            t.write_all(&out)?;
            #[cfg(test)]
            if self.fail_sync {
                return Err(io::Error::other("injected fsync failure"));
            }
            t.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            // Ours alone (created here, under a name no other journal or
            // process uses): nothing else can lose by its removal.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.path);
        self.file = t;
        self.len = out.len() as u64;
        self.dirty = false;
        log::debug!(
            "longlink: journal compacted to {} bytes ({} live messages)",
            self.len,
            self.live.len()
        );
        Ok(())
    }

    #[cfg(test)]
    fn set_compact_at(&mut self, n: u64) {
        self.compact_at = n;
    }

    #[cfg(test)]
    fn file_len(&self) -> u64 {
        self.len
    }
}

/// Creates (never opens an existing file) a temp file beside `path`, named
/// after the whole file name, this process and a counter:
/// `<file name>.<pid>.<n>.compacting`. Two journals in one directory, or
/// two processes, never share one, whatever the journals are called.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the journal path has no file name",
        )
    })?;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(
            ".{}.{}.compacting",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // Left by a crashed process that had our pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

fn record(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
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

struct Record<'a> {
    kind: u8,
    id: u64,
    /// Everything after the id, as written.
    payload: &'a [u8],
    /// Of a message with a time to live (µs since the Unix epoch).
    deadline: Option<u64>,
    text: &'a str,
    size: u64,
}

fn ttl_payload(deadline: SystemTime, text: &str) -> Vec<u8> {
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
fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_micros(us))
        .unwrap_or(UNIX_EPOCH)
}

/// Parse after the magic; returns the good records, where they end, and
/// why parsing stopped early (a torn or corrupt tail), if it did.
fn parse(bytes: &[u8]) -> (Vec<Record<'_>>, usize, Option<String>) {
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

fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
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

    fn temp_path(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "longlink-unit-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("journal")
    }

    fn ids(r: &Replay) -> Vec<u64> {
        r.messages.iter().map(|(id, ..)| *id).collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn replays_what_was_not_acknowledged_or_dropped_in_order() {
        let p = temp_path("replay");
        let now = Instant::now();
        {
            let (mut j, r) = Journal::open(&p, JournalSync::Never).unwrap();
            assert!(r.messages.is_empty());
            for id in 1..=6 {
                j.append(id, &format!("{{\"n\":{id}}}"), None, now).unwrap();
            }
            j.ack(2);
            j.drop_id(4);
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [3, 5, 6]);
        assert_eq!(r.messages[0].1, "{\"n\":3}");
        assert!(r.cut.is_none());
        assert_eq!(j.next_id(), 7);
    }

    #[test]
    fn the_id_counter_survives_when_everything_was_acknowledged() {
        let p = temp_path("counter");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::EveryMessage).unwrap();
            j.append(1, "{}", None, Instant::now()).unwrap();
            j.append(2, "{}", None, Instant::now()).unwrap();
            j.ack(2);
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert!(r.messages.is_empty());
        assert_eq!(j.next_id(), 3);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_later_appends_replay() {
        let p = temp_path("torn");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            for id in 1..=3 {
                j.append(id, "{\"x\":1}", None, Instant::now()).unwrap();
            }
        }
        let full = std::fs::metadata(&p).unwrap().len();
        // Cut in the middle of the last record, as a crash mid-write would.
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        {
            let (mut j, r) = Journal::open(&p, JournalSync::Never).unwrap();
            assert_eq!(ids(&r), [1, 2]);
            assert!(r.cut.is_some());
            // The id of the torn record is reused: it was never accepted.
            assert_eq!(j.next_id(), 3);
            j.append(3, "{\"y\":2}", None, Instant::now()).unwrap();
        }
        let (_, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [1, 2, 3]);
        assert_eq!(r.messages[2].1, "{\"y\":2}");
        assert!(r.cut.is_none());
    }

    #[test]
    fn garbage_after_good_records_is_cut_never_replayed() {
        let p = temp_path("garbage");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.append(1, "{}", None, Instant::now()).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        // A plausible header with a wrong checksum, then noise.
        f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4]).unwrap();
        f.write_all(&[0xAB; 20]).unwrap();
        drop(f);
        let (_, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [1]);
        assert!(r.cut.unwrap().1.contains("checksum"));
    }

    #[test]
    fn a_foreign_file_is_refused_not_overwritten() {
        let p = temp_path("foreign");
        std::fs::write(&p, b"important data, not a journal").unwrap();
        let err = Journal::open(&p, JournalSync::Never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read(&p).unwrap(), b"important data, not a journal");
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let p = temp_path("lock");
        let (_j, _) = Journal::open(&p, JournalSync::Never).unwrap();
        let err = Journal::open(&p, JournalSync::Never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn compaction_keeps_live_messages_and_the_counter_and_bounds_the_file() {
        let p = temp_path("compact");
        let text = "x".repeat(100);
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.set_compact_at(4096);
            for id in 1..=1000 {
                j.append(id, &text, None, Instant::now()).unwrap();
                if id % 10 == 0 {
                    j.ack(id - 3);
                }
                assert!(j.file_len() < 8192, "file grew to {}", j.file_len());
            }
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
        assert_eq!(j.next_id(), 1001);
    }

    /// Appends 1000 messages of 100 bytes, acknowledging all but the last
    /// three as it goes, with compaction from 4 KiB on.
    fn churn(j: &mut Journal) {
        j.set_compact_at(4096);
        let text = "x".repeat(100);
        for id in 1..=1000 {
            j.append(id, &text, None, Instant::now()).unwrap();
            if id % 10 == 0 {
                j.ack(id - 3);
            }
        }
    }

    #[test]
    fn a_journal_named_like_a_temp_file_compacts_without_harming_itself() {
        let p = temp_path("self").with_file_name("outbox.compacting");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            churn(&mut j);
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
        assert_eq!(j.next_id(), 1001);
    }

    #[test]
    fn compaction_leaves_every_other_file_in_the_directory_alone() {
        let p = temp_path("neighbours").with_file_name("j.1");
        let dir = p.parent().unwrap().to_owned();
        // Another journal, in use, whose name the old temp name matched,
        // and a journal sharing the stem.
        let (mut other, _) = Journal::open(&dir.join("j.compacting"), JournalSync::Never).unwrap();
        other
            .append(1, "{\"kept\":1}", None, Instant::now())
            .unwrap();
        let (_sibling, _) = Journal::open(&dir.join("j.2"), JournalSync::Never).unwrap();
        let before: Vec<_> = ["j.compacting", "j.2"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            churn(&mut j);
            assert!(j.file_len() < 8192, "compaction ran");
        }
        let after: Vec<_> = ["j.compacting", "j.2"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        assert_eq!(before, after, "a neighbour's file changed");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["j.1", "j.2", "j.compacting"], "no temp file left");
        drop(other);
        let (_, r) = Journal::open(&dir.join("j.compacting"), JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [1]);
    }

    #[test]
    fn a_message_whose_sync_fails_is_refused_and_never_replayed() {
        let p = temp_path("syncfail");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::EveryMessage).unwrap();
            j.append(1, "{\"n\":1}", None, Instant::now()).unwrap();
            let len = j.file_len();
            j.fail_sync = true;
            let err = j.append(2, "{\"n\":2}", None, Instant::now()).unwrap_err();
            assert!(err.to_string().contains("sync"), "{err}");
            assert_eq!(j.file_len(), len, "the record is cut off");
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
            assert_eq!(j.next_id(), 2, "the refused id is free again");
            // The disk recovers: the next message takes the refused one's id.
            j.fail_sync = false;
            j.append(2, "{\"n\":3}", None, Instant::now()).unwrap();
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(
            r.messages,
            [(1, "{\"n\":1}".into(), None), (2, "{\"n\":3}".into(), None)]
        );
        assert!(r.cut.is_none());
        assert_eq!(j.next_id(), 3);
    }

    #[test]
    fn a_failed_compaction_removes_its_temp_file_and_keeps_the_journal() {
        let p = temp_path("compactfail");
        let dir = p.parent().unwrap().to_owned();
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.fail_sync = true;
            churn(&mut j);
            assert!(j.file_len() > 8192, "no compaction succeeded");
        }
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["journal"]);
        let (_, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
    }

    #[test]
    fn a_version_1_journal_is_read_and_rewritten_as_version_2() {
        let p = temp_path("v1");
        let mut old = MAGIC_V1.to_vec();
        for id in 1..=3 {
            old.extend_from_slice(&record(MSG, id, format!("{{\"n\":{id}}}").as_bytes()));
        }
        old.extend_from_slice(&record(ACK, 1, &[]));
        std::fs::write(&p, &old).unwrap();
        {
            let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
            assert_eq!(ids(&r), [2, 3]);
            assert_eq!(r.messages[0], (2, "{\"n\":2}".into(), None));
            assert_eq!(j.next_id(), 4);
        }
        assert!(std::fs::read(&p).unwrap().starts_with(MAGIC));
        let (_, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [2, 3]);
    }

    #[test]
    fn a_deadline_is_kept_across_reopening_and_compaction() {
        let p = temp_path("deadline");
        let at = UNIX_EPOCH + Duration::from_micros(1_800_000_000_123_456);
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.append(1, "{\"a\":1}", Some(at), Instant::now()).unwrap();
            j.append(2, "{\"b\":2}", None, Instant::now()).unwrap();
        }
        let (mut j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(
            r.messages,
            [
                (1, "{\"a\":1}".into(), Some(at)),
                (2, "{\"b\":2}".into(), None)
            ]
        );
        j.compact().unwrap();
        drop(j);
        let (_, again) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(again.messages, r.messages);
    }

    #[test]
    fn the_run_survives_reopening_and_compaction() {
        let p = temp_path("run");
        let run = {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            assert!(j.run() > 0 && j.run() < 1 << 53);
            churn(&mut j);
            j.run()
        };
        let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(j.run(), run);
        assert_eq!(j.next_id(), 1001, "the run record is not an id");
        j.compact().unwrap();
        drop(j);
        let (j, _) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(j.run(), run);
        // A version 1 journal gets a run, kept from then on.
        let v1 = temp_path("run-v1");
        std::fs::write(&v1, MAGIC_V1).unwrap();
        let run = Journal::open(&v1, JournalSync::Never).unwrap().0.run();
        assert!(run > 0);
        assert_eq!(Journal::open(&v1, JournalSync::Never).unwrap().0.run(), run);
    }

    #[test]
    fn interval_sync_reports_when_it_is_due() {
        let p = temp_path("sync");
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        let (mut j, _) = Journal::open(&p, JournalSync::Interval(d)).unwrap();
        j.last_sync = t0;
        j.append(1, "{}", None, t0 + Duration::from_millis(10))
            .unwrap();
        assert_eq!(j.sync_due(), Some(t0 + d));
        j.sync_if_due(t0 + Duration::from_millis(50));
        assert_eq!(j.sync_due(), Some(t0 + d));
        j.sync_if_due(t0 + d);
        assert_eq!(j.sync_due(), None);
    }
}
