//! The live socket: its registration in the poller, readiness, batched
//! writes and flushes, and the blocking frames of the goodbye at close.

use std::sync::Arc;
use std::time::Instant;

use polling::{Event as Ready, PollMode, Poller};
use tungstenite::Message as Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::transport::{Ws, tcp};

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

    /// Start saying goodbye: the ping (`ping`, its number), then a Close
    /// frame; the socket turns blocking. False if it cannot.
    pub(super) fn start_goodbye(&mut self, ping: Option<u64>, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tcp(&self.ws);
        if left.is_zero() || s.set_nonblocking(false).is_err() {
            return false;
        }
        let _ = s.set_write_timeout(Some(left));
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
        true
    }

    /// Leave without waiting: a Close frame with `code`, written if the
    /// socket takes it now (non-blocking), then the socket is dropped.
    pub(super) fn go_away(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
    }

    /// The next frame while saying goodbye; `None` once `deadline` passes
    /// or the connection ends.
    pub(super) fn goodbye_frame(&mut self, deadline: Instant) -> Option<Frame> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp(&self.ws).set_read_timeout(Some(left)).is_err() {
            return None;
        }
        self.ws.read().ok()
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
