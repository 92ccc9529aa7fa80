//! The live socket: its registration in the poller, readiness, batched
//! writes and flushes, and the blocking goodbye at close.

use std::sync::Arc;
use std::time::Instant;

use polling::{Event as Ready, PollMode, Poller};
use tungstenite::Message as Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::transport::{Ws, tcp};
use crate::session::{Inbound, Session};

/// One connected socket and what the driver knows about it.
pub(super) struct Socket {
    /// Its key in the poller.
    pub(super) key: usize,
    pub(super) ws: Ws,
    poller: Arc<Poller>,
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) write_blocked: bool,
    pub(super) need_flush: bool,
    interest: (bool, bool),
    /// Reading stopped because the dispatcher is full.
    pub(super) paused: bool,
}

impl Socket {
    pub(super) fn register(key: usize, ws: Ws, poller: Arc<Poller>) -> std::io::Result<Socket> {
        // SAFETY: polling requires the socket to be deleted from the poller
        // before it is closed. `Socket` owns the socket and deletes it in
        // Drop, which runs before the socket field is dropped.
        #[allow(unsafe_code)]
        unsafe {
            poller.add_with_mode(tcp(&ws), Ready::readable(key), PollMode::Level)?;
        }
        Ok(Socket {
            key,
            ws,
            poller,
            // Frames may already sit in tungstenite's or TLS's buffer.
            readable: true,
            writable: false,
            write_blocked: false,
            need_flush: false,
            interest: (true, false),
            paused: false,
        })
    }

    pub(super) fn set_interest(&mut self) {
        let want = (!self.paused, self.write_blocked);
        if want != self.interest {
            let ev = Ready::new(self.key, want.0, want.1);
            if self
                .poller
                .modify_with_mode(tcp(&self.ws), ev, PollMode::Level)
                .is_ok()
            {
                self.interest = want;
            }
        }
    }

    /// Flush tungstenite's buffer; `WouldBlock` leaves it buffered.
    pub(super) fn flush(&mut self) -> Result<(), String> {
        match self.ws.flush() {
            Ok(()) => {
                self.need_flush = false;
                self.write_blocked = false;
                Ok(())
            }
            Err(e) if would_block(&e) => {
                self.write_blocked = true;
                Ok(())
            }
            Err(e) => Err(format!("write failed: {e}")),
        }
    }

    /// Write one frame into tungstenite's buffer. On `WouldBlock` the frame
    /// is *already* buffered: never write it again.
    pub(super) fn write(&mut self, frame: Frame) -> Result<(), tungstenite::Error> {
        self.need_flush = true;
        match self.ws.write(frame) {
            Err(e) if would_block(&e) => {
                self.write_blocked = true;
                Ok(())
            }
            r => r,
        }
    }

    /// Nothing waits to be written out.
    pub(super) fn flushed(&self) -> bool {
        !self.write_blocked && !self.need_flush
    }

    /// Say goodbye: a ping, then a Close frame; wait (until `deadline`) for
    /// the pong and the peer's Close. Only the pong proves the peer read
    /// what we wrote: a Close from the peer may have crossed ours, sent
    /// before it read our last frames, and servers drop data that arrives
    /// after they began closing. What arrives meanwhile (the pong,
    /// acknowledgements, replies) goes to the session.
    pub(super) fn goodbye(&mut self, session: &mut Session, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tcp(&self.ws);
        if left.is_zero() || s.set_nonblocking(false).is_err() {
            return;
        }
        let _ = s.set_write_timeout(Some(left));
        let ping = session.goodbye_ping(Instant::now());
        if let Some(seq) = ping {
            let _ = self
                .ws
                .write(Frame::Ping(seq.to_be_bytes().to_vec().into()));
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
        let mut peer_closed = false;
        while !(peer_closed && session.confirmed()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tcp(&self.ws).set_read_timeout(Some(left)).is_err() {
                return;
            }
            let now = Instant::now();
            match self.ws.read() {
                Ok(Frame::Pong(p)) => session.handle_frame(now, Inbound::Pong(p.to_vec())),
                Ok(Frame::Text(t)) => session.handle_frame(now, Inbound::Text(t)),
                Ok(Frame::Close(_)) => peer_closed = true,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = self.poller.delete(tcp(&self.ws));
    }
}

pub(super) fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}
