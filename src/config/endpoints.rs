//! Where to connect: several endpoints, and a URL computed at every attempt.

use std::sync::Arc;

use super::ClientBuilder;

impl ClientBuilder {
    /// Several URLs for one service, tried in order: an attempt that fails
    /// moves to the next one (round the list); a link that works stays on
    /// its endpoint, and after a drop tries it first. Backoff counts
    /// attempts across the list, so one dead host does not make the link
    /// hammer the next. Replaces the URL given to
    /// [`Client::builder`](crate::Client::builder). Each attempt's state,
    /// [`LinkState::Connecting`](crate::LinkState::Connecting), names its
    /// endpoint by index in this list; [`Stats::endpoint`](crate::Stats::endpoint)
    /// says which one is in use (redacted). Each is checked as the
    /// builder's URL is; the list must not be empty.
    ///
    /// ```no_run
    /// use longlink::{Client, LinkState};
    ///
    /// const SERVERS: [&str; 2] = ["wss://a.example.com/ws", "wss://b.example.com/ws"];
    /// let client = Client::builder(SERVERS[0])
    ///     .endpoints(SERVERS)
    ///     .on_state(|s| {
    ///         if let LinkState::Connecting { endpoint, .. } = s {
    ///             println!("connecting to {}", SERVERS[*endpoint]);
    ///         }
    ///     })
    ///     .start()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn endpoints<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cfg.endpoints = urls.into_iter().map(Into::into).collect();
        if self.cfg.endpoints.is_empty() {
            self.problems
                .push("endpoints must name at least one URL".into());
        }
        self
    }

    /// Compute the URL at every attempt, from the endpoint's: a signed URL,
    /// or a token in the query that expires. Called once per attempt, on
    /// the attempt's own thread (keep it quick). A URL it returns that is
    /// not usable fails that attempt (retried with backoff). Like every
    /// URL, it is never logged with its query or user info.
    ///
    /// ```no_run
    /// # fn fresh_token() -> String { String::new() }
    /// let client = longlink::Client::builder("wss://example.com/ws")
    ///     .url_with(|base| format!("{base}?token={}", fresh_token()))
    ///     .start()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn url_with(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.cfg.url_fn = Some(Arc::new(f));
        self
    }
}
