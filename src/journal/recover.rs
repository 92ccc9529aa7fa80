//! Opening a journal: create or lock it, replay what is still to be sent,
//! cut a torn tail, upgrade a version-1 file.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::compact::COMPACT_AT;
use super::file::sync_dir;
use super::format::{ACK, DROP, MAGIC, MAGIC_V1, MSG, MSG_TTL, RUN, from_micros, parse, record};
use super::{Journal, JournalSync, Replay};

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
            j.run = super::new_run();
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
            j.run = super::new_run();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testing::{churn, ids, temp_path};
    use std::time::{Duration, UNIX_EPOCH};

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
}
