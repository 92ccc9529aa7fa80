//! The knobs of a link's rules, as the builder sets them.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use tungstenite::Utf8Bytes;

use crate::Overflow;
use crate::backoff::BackoffPolicy;

/// A field name or suffix: the defaults are static, so a link that keeps
/// them allocates nothing for them.
pub(crate) type Name = Cow<'static, str>;

/// The knobs the rules need: part of the configuration, which the builder
/// writes and the session shares (one copy per link: an idle link should
/// cost little memory).
#[derive(Clone)]
pub(crate) struct Rules {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    /// Frame text and reply operator.
    pub(crate) app_heartbeat: Option<(Utf8Bytes, String)>,
    pub(crate) app_heartbeat_dispatch: bool,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) retry_rejections: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) login_timeout: Duration,
    pub(crate) on_open: bool,
    pub(crate) overflow: Overflow,
    pub(crate) operator_field: Name,
    pub(crate) error_suffix: Name,
    pub(crate) correlation_field: Option<Name>,
    /// At least once: the acknowledgement's operator and id field.
    pub(crate) acks: Option<(Name, Name)>,
    /// At least once: messages and bytes written ahead of the
    /// acknowledgements, at most (what a cut makes to write again).
    pub(crate) window: (usize, usize),
    /// Durable: messages with ids stay in the journal at close.
    pub(crate) durable: bool,
    /// Receipts and answered requests one connection keeps while it waits
    /// for a pong ([`conn::TRACK_CAP`]; the simulator makes it small).
    pub(crate) track_cap: usize,
    /// How many endpoints to go round (at least 1).
    pub(crate) endpoints: usize,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the app heartbeat's text: a payload.
        f.debug_struct("Rules")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field(
                "app_heartbeat_reply",
                &self.app_heartbeat.as_ref().map(|(_, reply)| reply),
            )
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("login_timeout", &self.login_timeout)
            .field("on_open", &self.on_open)
            .field("overflow", &self.overflow)
            .field("operator_field", &self.operator_field)
            .field("correlation_field", &self.correlation_field)
            .field("acks", &self.acks)
            .field("window", &self.window)
            .field("durable", &self.durable)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    /// An idle link should cost little: the default names are not copied.
    #[test]
    fn default_names_allocate_nothing() {
        let b = crate::Client::builder("ws://example.com").at_least_once(true);
        let cfg = &b.cfg;
        let names = [
            &cfg.rules.operator_field,
            &cfg.rules.error_suffix,
            &cfg.reply_suffix,
            &cfg.ack_operator,
            &cfg.msg_id_field,
            &cfg.msg_run_field,
        ];
        assert!(names.iter().all(|n| matches!(n, Cow::Borrowed(_))));
        let custom = crate::Client::builder("ws://example.com").operator_field("op");
        assert_eq!(custom.cfg.rules.operator_field, "op");
    }

    #[test]
    fn debug_names_the_knobs_but_not_the_heartbeat_text() {
        let cfg = crate::Client::builder("ws://example.com").app_heartbeat(
            serde_json::json!({"Operator": "Heart", "t": "s3cret"}),
            "HeartOK",
        );
        let shown = format!("{:?}", cfg.cfg.rules);
        assert!(shown.contains("heartbeat_interval: 25s"), "{shown}");
        assert!(shown.contains("HeartOK"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
