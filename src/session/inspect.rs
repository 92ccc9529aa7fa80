//! Views of a session for the simulator and the fuzz targets (what is
//! queued, in flight and awaited, to check invariants against a reference
//! model), and giving memory back. Nothing here changes what it does.

use super::Session;

impl Session {
    /// Give back the room of queues that are empty now (a link may idle
    /// for hours after a burst; an idle link should cost little).
    pub(crate) fn release_memory(&mut self) {
        fn trim<T>(q: &mut std::collections::VecDeque<T>) {
            if q.is_empty() {
                q.shrink_to_fit();
            }
        }
        trim(&mut self.outputs);
        trim(&mut self.control);
        trim(&mut self.outbox);
        trim(&mut self.unacked);
        trim(&mut self.on_open_queue);
        if let Some(c) = self.conn.as_mut() {
            c.release_memory();
        }
    }

    /// Room the queued messages hold in the budget: count and bytes of
    /// the outbox and of the messages awaiting their acknowledgement.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn held(&self) -> (usize, usize) {
        let items = self.outbox.iter().chain(self.unacked.iter());
        items.fold((0, 0), |(n, b), i| (n + 1, b + i.weight))
    }

    /// Receipts and answered requests the connection keeps until a pong.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        self.conn.as_ref().map_or((0, 0), |c| {
            (c.awaiting.len(), c.tracked() - c.awaiting.len())
        })
    }

    /// Requests written before and queued again after their link died
    /// (idempotent ones): they take room past the bound.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn requeued_requests(&self) -> usize {
        let again = |i: &&crate::command::Item| i.written && i.reply.is_some();
        self.outbox.iter().filter(again).count()
    }

    /// Whether the warning that no acknowledgement comes was given.
    #[cfg(test)]
    pub(crate) fn warned_of_silence(&self) -> bool {
        self.ack_warned
    }
}
