//! Connection attempts: each runs on a short-lived thread of its own (a
//! connect blocks: TCP, proxy, TLS, upgrade, and DNS without a deadline),
//! and answers through a channel the I/O thread polls, so that `close`
//! never waits for one.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::socket::Socket;
use super::{Io, transport};
use crate::Error;
use crate::config::redact_url;

impl Io {
    /// Start a connection attempt on its own thread: a connect blocks
    /// (TCP, proxy, TLS, upgrade, up to `deadline`; DNS without one), and
    /// `close` must not wait for it.
    pub(super) fn dial(&mut self, now: Instant, deadline: Instant, endpoint: usize) {
        crate::state::Counters::store(&self.shared.counters.endpoint, endpoint as u64);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("longlink-connect".into())
            .spawn(move || {
                let result = transport::connect(&shared.cfg, endpoint, deadline);
                // Abandoned (close, or too late): the socket closes here.
                let _ = tx.send(result);
                shared.wake();
            });
        match spawned {
            Ok(_) => self.attempt = Some(rx),
            Err(e) => {
                let e = Error::Connect {
                    context: "spawning the connect thread".into(),
                    source: Box::new(e),
                };
                self.session.handle_connect_failed(now, e);
            }
        }
    }

    /// Take the attempt's answer if it has come.
    #[inline(never)]
    pub(super) fn take_attempt(&mut self, now: Instant) {
        let answer = match self.attempt.as_ref().map(Receiver::try_recv) {
            None | Some(Err(TryRecvError::Empty)) => return,
            Some(Ok(answer)) => answer,
            Some(Err(TryRecvError::Disconnected)) => Err(Error::Connect {
                context: "connecting".into(),
                source: "the connect thread ended without an answer".into(),
            }),
        };
        self.attempt = None;
        let registered = answer.and_then(|ws| {
            self.sock_keys += 1;
            Socket::register(self.sock_keys, ws, self.shared.poller.clone()).map_err(|e| {
                Error::Connect {
                    context: "registering the socket".into(),
                    source: Box::new(e),
                }
            })
        });
        match registered {
            Ok(sock) => {
                let cfg = &self.shared.cfg;
                let via = cfg.proxy.as_ref().map_or_else(String::new, |p| {
                    format!(" through proxy {}:{}", p.host, p.port)
                });
                let endpoint = cfg.endpoint(self.session.endpoint());
                log::info!("longlink: connected to {}{via}", redact_url(endpoint));
                // The first reads and writes (TLS) may run deep.
                self.stack_dirty = true;
                self.sock = Some(sock);
                let id = self.session.handle_connected(now);
                self.shared.live_conn.store(id, Ordering::Release);
            }
            Err(e) => {
                let cfg = &self.shared.cfg;
                let url = redact_url(cfg.endpoint(self.session.endpoint()));
                log::warn!("longlink: connecting to {url} failed: {}", e.describe());
                self.session.handle_connect_failed(now, e);
            }
        }
        self.perform(now);
    }
}
