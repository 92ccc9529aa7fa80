//! Configuration and the builder. Every setter says what it defaults to.
//!
//! Where to look: [`Config`] (what the threads read) and [`ClientBuilder`]
//! are here; [`builder`] holds the defaults and every setter, [`validate`]
//! checks the whole configuration once, [`url`] checks and redacts URLs.

mod builder;
mod endpoints;
mod url;
mod validate;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::Registry;
use crate::session::{Name, Rules};
use crate::tunnel::HttpProxy;
use crate::{Error, JournalSync, Link};

pub(crate) use url::redact_url;

/// The re-login hook: runs after every handshake, before the outbox flush.
pub(crate) type OpenHook = dyn Fn(&Link) -> Result<(), Error> + Send + Sync;
/// Headers produced at every connect.
pub(crate) type HeaderFn = dyn Fn() -> Vec<(String, String)> + Send + Sync;
pub(crate) type UrlFn = dyn Fn(&str) -> String + Send + Sync;

/// Everything the threads need to know, fixed at build time.
pub(crate) struct Config {
    /// The first endpoint (shown in `Debug` and logs, redacted).
    pub(crate) url: String,
    /// Every endpoint, in order, checked and normalised (the first is
    /// `url`); empty when there is only `url` (one allocation less per link).
    pub(crate) endpoints: Vec<String>,
    /// Computes each attempt's URL from its endpoint.
    pub(crate) url_fn: Option<Arc<UrlFn>>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) header_fn: Option<Arc<HeaderFn>>,
    pub(crate) outbox_capacity: usize,
    pub(crate) outbox_max_bytes: usize,
    pub(crate) on_open: Option<Arc<OpenHook>>,
    pub(crate) reply_suffix: Name,
    pub(crate) request_timeout: Duration,
    pub(crate) dispatch_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) drop_close_timeout: Duration,
    /// What the session's rules need (timers, backoff, overflow, field
    /// names, the in-flight window), shared with the session.
    pub(crate) rules: Arc<Rules>,
    pub(crate) at_least_once: bool,
    pub(crate) ack_operator: Name,
    pub(crate) msg_id_field: Name,
    pub(crate) msg_run_field: Name,
    pub(crate) journal: Option<PathBuf>,
    pub(crate) journal_sync: JournalSync,
    #[cfg(feature = "native-tls")]
    pub(crate) tls_roots: Vec<native_tls::Certificate>,
    pub(crate) accept_invalid_certs: bool,
    /// The CONNECT proxy, explicit or (after `validate`) from the environment.
    /// Boxed: most links have none.
    pub(crate) proxy: Option<Box<HttpProxy>>,
    pub(crate) proxy_from_env: bool,
}

impl Config {
    /// The URL of an attempt on endpoint `i`: computed by `url_with` (and
    /// checked: a bad one fails the attempt, it never panics) or as given.
    pub(crate) fn attempt_url(&self, i: usize) -> Result<String, Error> {
        let endpoint = self.endpoint(i);
        match &self.url_fn {
            // A transient failure: the next attempt calls it again.
            Some(f) => url::check_url(&f(endpoint)).map_err(|why| Error::Connect {
                context: "computing the URL (url_with)".into(),
                source: why.into(),
            }),
            None => Ok(endpoint.to_owned()),
        }
    }

    /// Endpoint `i`, as checked (the first is `url`).
    pub(crate) fn endpoint(&self, i: usize) -> &str {
        self.endpoints.get(i).unwrap_or(&self.url)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_url(&self.url))
            .field(
                "endpoints",
                &(0..self.endpoints.len().max(1))
                    .map(|i| redact_url(self.endpoint(i)))
                    .collect::<Vec<_>>(),
            )
            .field("url_with", &self.url_fn.is_some())
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("header_fn", &self.header_fn.is_some())
            .field("rules", &self.rules)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("outbox_max_bytes", &self.outbox_max_bytes)
            .field("on_open", &self.on_open.is_some())
            .field("at_least_once", &self.at_least_once)
            .field("journal", &self.journal)
            .field("journal_sync", &self.journal_sync)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .field("proxy", &self.proxy)
            .field("proxy_from_env", &self.proxy_from_env)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`](crate::Client). Start with
/// [`Client::builder`](crate::Client::builder).
///
/// Setters never fail; [`connect`](Self::connect) and [`start`](Self::start)
/// validate everything once, before any connection, and return
/// [`Error::InvalidConfig`]. The URL must be `ws://` or `wss://` (in any
/// case: `WSS://` works), name a host, and have a port in 1..=65535 if it
/// gives one; errors show it as given, without its query or user info.
pub struct ClientBuilder {
    pub(crate) cfg: Config,
    problems: Vec<String>,
    /// Subscriptions registered before the first connect.
    pub(crate) registry: Arc<Registry>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.cfg)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_header_values() {
        let b = ClientBuilder::new("ws://h/?t=s3cret").header("Authorization", "Bearer s3cret");
        let text = format!("{b:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("Authorization"));
    }
}
