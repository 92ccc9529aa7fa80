//! Writing to an open journal: append, acknowledge, drop, and the sync
//! policy; a write that fails is cut back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::format::{ACK, DROP, MSG, MSG_TTL, record, ttl_payload};
use super::{Journal, JournalSync};

impl Journal {
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

    pub(super) fn apply_ack<T>(&mut self, upto: u64, texts: &mut BTreeMap<u64, T>) {
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

    pub(super) fn forget(&mut self, id: u64) {
        if let Some(size) = self.live.remove(&id) {
            self.live_bytes -= size;
        }
    }

    /// Append one record; on failure cut the file back to where it was.
    pub(super) fn write(&mut self, kind: u8, id: u64, payload: &[u8]) -> io::Result<u64> {
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

    #[cfg(test)]
    pub(super) fn file_len(&self) -> u64 {
        self.len
    }
}

pub(super) fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{ids, temp_path};
    use std::time::Duration;

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
