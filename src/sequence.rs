//! At-least-once sequencing: the run id and message ids, how they are
//! stamped into a message, and what a durable journal hands back at start.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::command::Item;
use crate::config::Config;
use crate::journal::{Journal, new_run};
use crate::{Error, Message};

/// Assigns at-least-once ids, and journals messages when durable.
pub(crate) struct Sequencer {
    pub(crate) next: u64,
    pub(crate) journal: Option<Journal>,
}

/// What a client starts with.
pub(crate) struct Start {
    /// Ids (and the journal), under at least once.
    /// Boxed: most links do without, and the shared state stays small.
    pub(crate) seq: Option<Box<Mutex<Sequencer>>>,
    /// `"msgRun":R,"msgId":` ready to splice into a message (empty without
    /// ids).
    pub(crate) stamp_key: String,
    /// Messages recovered from the journal, to be sent first.
    pub(crate) initial: Vec<Item>,
    /// The same, as the application sees them.
    pub(crate) recovered: Vec<Message>,
    /// Journaled messages whose time to live ran out while no process ran.
    pub(crate) expired: u64,
}

/// Open the journal (if durable), recover what it holds, pick the run and
/// the first id.
pub(crate) fn start(cfg: &Config) -> Result<Start, Error> {
    let mut initial = Vec::new();
    let mut recovered = Vec::new();
    let mut expired = 0;
    let seq = if cfg.at_least_once {
        let journal = match &cfg.journal {
            Some(path) => {
                let (mut j, replay) =
                    Journal::open(path, cfg.journal_sync).map_err(|source| Error::Journal {
                        context: format!("opening {}", path.display()),
                        source,
                        message: None,
                    })?;
                let (wall, now) = (SystemTime::now(), Instant::now());
                let r = recover(
                    &mut j,
                    replay.messages,
                    (wall, now),
                    &cfg.rules.operator_field,
                    &cfg.msg_run_field,
                );
                (initial, recovered, expired) = (r.items, r.messages, r.expired);
                if expired > 0 {
                    log::info!(
                        "longlink: {expired} messages in the journal expired while no client ran"
                    );
                }
                if !initial.is_empty() {
                    log::info!(
                        "longlink: {} messages recovered from the journal",
                        initial.len()
                    );
                }
                Some(j)
            }
            None => None,
        };
        // The server tells duplicates by (run, id): a new run starts a
        // new sequence. A journal keeps its run, and its ids continue
        // after its last one. Ids start at the wall clock in
        // microseconds only to make them easy to tell apart in logs:
        // nothing depends on the clock (it may step back).
        let run = journal.as_ref().map_or_else(new_run, Journal::run);
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let next = journal.as_ref().map_or(clock, |j| j.next_id().max(clock));
        Some((run, Box::new(Mutex::new(Sequencer { next, journal }))))
    } else {
        None
    };
    let (stamp_key, seq) = match seq {
        Some((run, seq)) => {
            let key = format!(
                "{}:{run},{}:",
                serde_json::to_string(&cfg.msg_run_field).unwrap_or_default(),
                serde_json::to_string(&*cfg.msg_id_field).unwrap_or_default()
            );
            (key, Some(seq))
        }
        None => (String::new(), None),
    };
    Ok(Start {
        seq,
        stamp_key,
        initial,
        recovered,
        expired,
    })
}

/// What a journal's replay gives a new client.
pub(crate) struct Recovered {
    /// To be sent first, in id order.
    pub(crate) items: Vec<Item>,
    /// The same, as the application sees them.
    pub(crate) messages: Vec<Message>,
    /// Whose time to live ran out while no process ran (dropped from the journal).
    pub(crate) expired: u64,
}

/// Turn what the journal replayed into messages to send first, as of the
/// moment `(wall, now)`: the wall clock, which the journal's deadlines are
/// kept in, and the monotonic one, which the session's are. Split from
/// [`start`] so that the simulator runs this same code on its simulated
/// clocks.
pub(crate) fn recover(
    j: &mut Journal,
    messages: Vec<(u64, String, Option<SystemTime>)>,
    (wall, now): (SystemTime, Instant),
    operator_field: &str,
    msg_run_field: &str,
) -> Recovered {
    let mut r = Recovered {
        items: Vec::new(),
        messages: Vec::new(),
        expired: 0,
    };
    let run_key = format!(
        "{}:",
        serde_json::to_string(msg_run_field).unwrap_or_default()
    );
    for (id, text, deadline) in messages {
        let left = match deadline.map(|d| d.duration_since(wall)) {
            // Its time to live ran out while no process ran:
            // never sent late.
            Some(Err(_)) => {
                j.drop_id(id);
                r.expired += 1;
                continue;
            }
            Some(Ok(left)) => Some(left),
            None => None,
        };
        // Written by a version without runs: it joins the
        // journal's run (a check at start only, never per send).
        let text = match crate::message::decode(&text, operator_field) {
            Ok(m) if m.get(msg_run_field).is_none() => stamp_text(&text, &run_key, j.run()),
            _ => text,
        };
        if let Ok(m) = crate::message::decode(&text, operator_field) {
            r.messages.push(m);
        }
        let mut item = Item::new(text);
        item.id = Some(id);
        // Whether the last process wrote it is unknown. One
        // with a time to live keeps the time left (as if not
        // written: it is not sent once that runs out).
        item.expires = left.and_then(|l| now.checked_add(l));
        item.written = left.is_none();
        r.items.push(item);
    }
    r
}

/// The wall-clock time at which `item`'s time to live ends, for the journal.
pub(crate) fn wall_deadline(item: &Item) -> Option<SystemTime> {
    wall_deadline_at(item, Instant::now(), SystemTime::now())
}

/// [`wall_deadline`] as of `now` (`wall`: the same moment by the wall clock).
pub(crate) fn wall_deadline_at(item: &Item, now: Instant, wall: SystemTime) -> Option<SystemTime> {
    let left = item.expires?.saturating_duration_since(now);
    wall.checked_add(left)
}

/// `{"msgRun":R,"msgId":7,` + the rest of the encoded object (which starts
/// with `{`); `key` is `"msgRun":R,"msgId":`, made once per client. (Or
/// any `{key}{n},` in front.)
pub(crate) fn stamp_text(text: &str, key: &str, id: u64) -> String {
    let rest = text.strip_prefix('{').unwrap_or(text);
    let sep = if rest.starts_with('}') { "" } else { "," };
    format!("{{{key}{id}{sep}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_spliced_in_front_of_the_encoded_object() {
        assert_eq!(stamp_text("{}", "\"msgId\":", 7), "{\"msgId\":7}");
        assert_eq!(
            stamp_text("{\"Operator\":\"X\"}", "\"msgId\":", 12),
            "{\"msgId\":12,\"Operator\":\"X\"}"
        );
    }
}
