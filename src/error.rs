//! The one error type of this crate.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::Message;

/// Result alias with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as seen from the caller.
///
/// Variants that refuse a message hand it back: see [`Error::into_message`].
/// `Display` describes this layer only; the underlying cause, if any, is in
/// [`source`](std::error::Error::source). `Debug` never shows a message's
/// content (it may hold tokens or personal data): handed-back messages
/// appear as their operator and size; take them with
/// [`into_message`](Error::into_message).
#[non_exhaustive]
pub enum Error {
    /// The builder was given something unusable (bad URL, zero interval…).
    InvalidConfig(String),
    /// The message could not be serialized to JSON.
    Serialize(serde_json::Error),
    /// The message is not a JSON object with a string operator field.
    InvalidMessage {
        /// Why it was refused.
        reason: String,
        /// The message as it was serialized.
        message: Value,
    },
    /// The outbox is full (overflow policy `Reject`, or `Block` timed out).
    OutboxFull {
        /// The refused message, handed back.
        message: Value,
    },
    /// The link is closed (by [`Client::close`](crate::Client::close) or for good after a
    /// fatal error); the message was not accepted.
    Closed {
        /// The refused message, if the call carried one.
        message: Option<Value>,
    },
    /// No reply within the request's deadline. The request may or may not
    /// have reached the server.
    Timeout(Duration),
    /// The link died after the request was written and before its reply
    /// arrived: the server may or may not have acted on it.
    ConnectionLost,
    /// The server answered with an error operator (`XError`, `LoginError`…).
    ///
    /// `Display` shows the operator and, when the reply has them, up to
    /// three of the fields servers conventionally put an error's
    /// explanation in — [`REMOTE_ERROR_FIELDS`](Error::REMOTE_ERROR_FIELDS):
    /// `reason`, `message`, `msg`, `error`, `errMsg`, `code`, `errCode` —
    /// each cut to 100 characters; never the rest of the payload. That
    /// text is the server's, meant for a human: it is shown where the
    /// application prints the error, and never in longlink's logs or in
    /// `Debug` (which show the operator and size only), since a server may
    /// echo what it was sent. The whole reply is [`Error::remote`].
    Remote(Message),
    /// A connection attempt failed.
    Connect {
        /// What failed, for humans.
        context: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server refused the WebSocket upgrade with this HTTP status.
    Rejected {
        /// The HTTP status code.
        status: u16,
    },
    /// The HTTP proxy refused the `CONNECT` tunnel with this status (407:
    /// credentials missing or wrong; 403: not allowed; 502/504: it could
    /// not reach the server).
    ProxyRejected {
        /// The HTTP status code.
        status: u16,
        /// The proxy's reason phrase.
        reason: String,
    },
    /// TLS failed: certificate not trusted, wrong host name, protocol error.
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// The link gave up or was ended for good; the reason says why.
    Fatal(String),
    /// The durable outbox's journal could not be opened or written. When
    /// `send` returns it, the message was not accepted and is handed back.
    Journal {
        /// What failed, for humans.
        context: String,
        /// The cause.
        source: std::io::Error,
        /// The refused message, if the call carried one.
        message: Option<Value>,
    },
    /// [`Client::close`](crate::Client::close) could not flush everything:
    /// these messages never left, in their original order.
    Unsent {
        /// The messages, handed back.
        messages: Vec<Value>,
    },
    /// [`Client::close`](crate::Client::close) could not confirm every
    /// message it was responsible for: `count` of them were written but no
    /// pong (at most once) showed the server read them before the link
    /// ended, so they may or may not have arrived (their receipts say
    /// [`Failure::PossiblyLost`](crate::Failure::PossiblyLost)); `unsent`
    /// never left, in their original order.
    PossiblyLost {
        /// Messages that may have been lost.
        count: u64,
        /// The messages that never left, handed back.
        unsent: Vec<Value>,
    },
}

impl Error {
    /// An error for an [`on_open`](crate::ClientBuilder::on_open) hook that
    /// must end the link for good (e.g. the server answered `BanLogin`):
    /// the link goes to [`LinkState::Closed`](crate::LinkState::Closed) with this reason
    /// instead of retrying.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Error::Fatal(reason.into())
    }

    /// The message this error handed back, if any.
    pub fn into_message(self) -> Option<Value> {
        match self {
            Error::InvalidMessage { message, .. } | Error::OutboxFull { message } => Some(message),
            Error::Closed { message } | Error::Journal { message, .. } => message,
            _ => None,
        }
    }

    /// The fields of an error reply that [`Error::Remote`]'s `Display`
    /// shows, in this order (at most three of them).
    pub const REMOTE_ERROR_FIELDS: &'static [&'static str] = &[
        "reason", "message", "msg", "error", "errMsg", "code", "errCode",
    ];

    /// The server's error reply, if this is [`Error::Remote`], or a
    /// connection attempt whose `on_open` step failed on one.
    pub fn remote(&self) -> Option<&Message> {
        match self {
            Error::Remote(m) => Some(m),
            Error::Connect { source, .. } => source.downcast_ref::<Error>()?.remote(),
            _ => None,
        }
    }

    /// The `on_open` step of a connection attempt failed with `cause`.
    pub(crate) fn on_open_failed(cause: Error) -> Error {
        Error::Connect {
            context: "the on_open step failed".into(),
            source: Box::new(cause),
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// True for [`Error::ConnectionLost`]: the outcome is unknown.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost)
    }

    /// True for [`Error::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed { .. })
    }

    /// True for [`Error::OutboxFull`].
    pub fn is_full(&self) -> bool {
        matches!(self, Error::OutboxFull { .. })
    }

    /// This error and its causes on one line, for logs and close reasons:
    /// `TLS handshake failed: … certificate has expired`.
    pub(crate) fn describe(&self) -> String {
        self.describe_with(Error::to_string)
    }

    /// [`describe`](Self::describe) for logs and close reasons: an error
    /// reply shows its operator only (its reason may echo what the client
    /// sent, a token or personal data).
    pub(crate) fn describe_for_log(&self) -> String {
        self.describe_with(|e| match e {
            Error::Remote(m) => remote_operator(m),
            e => e.to_string(),
        })
    }

    fn describe_with(&self, show: impl Fn(&Error) -> String) -> String {
        let mut text = show(self);
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let more = match c.downcast_ref::<Error>() {
                Some(e) => show(e),
                None => c.to_string(),
            };
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = c.source();
        }
        text
    }

    /// Whether a later attempt cannot succeed without a change (bad
    /// certificate, refused upgrade, bad configuration).
    pub(crate) fn is_permanent(&self, retry_rejections: bool) -> bool {
        match self {
            Error::InvalidConfig(_) | Error::Fatal(_) => true,
            Error::Tls(e) => e.to_string().contains("certificate"),
            Error::Rejected { status } | Error::ProxyRejected { status, .. } => {
                !retry_rejections && (400..500).contains(status) && *status != 408 && *status != 429
            }
            _ => false,
        }
    }
}

fn remote_operator(m: &Message) -> String {
    format!("server answered with error operator {:?}", m.operator())
}

/// A scalar field of an error reply, quoted (control characters escaped)
/// and cut to 100 characters; objects and arrays are not shown.
fn short_value(v: &Value) -> Option<String> {
    const MAX: usize = 100;
    match v {
        Value::String(s) => {
            let mut cut: String = s.chars().take(MAX).collect();
            if cut.len() < s.len() {
                cut.push('…');
            }
            Some(format!("{cut:?}"))
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// How a handed-back message shows in `Debug`: operator and size only
/// (the operator under the default field name; otherwise the size alone).
struct Redacted<'a>(&'a Value);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The default operator field; a renamed one shows as size only.
        let op = self.0.get("Operator").and_then(Value::as_str);
        let size = serde_json::to_string(self.0).map_or(0, |t| t.len());
        match op {
            Some(op) => write!(f, "<message {op:?}, {size} bytes>"),
            None => write!(f, "<message, {size} bytes>"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(why) => f.debug_tuple("InvalidConfig").field(why).finish(),
            Error::Serialize(e) => f.debug_tuple("Serialize").field(e).finish(),
            Error::InvalidMessage { reason, message } => f
                .debug_struct("InvalidMessage")
                .field("reason", reason)
                .field("message", &Redacted(message))
                .finish(),
            Error::OutboxFull { message } => f
                .debug_struct("OutboxFull")
                .field("message", &Redacted(message))
                .finish(),
            Error::Closed { message } => f
                .debug_struct("Closed")
                .field("message", &message.as_ref().map(Redacted))
                .finish(),
            Error::Timeout(d) => f.debug_tuple("Timeout").field(d).finish(),
            Error::ConnectionLost => f.write_str("ConnectionLost"),
            Error::Remote(m) => f.debug_tuple("Remote").field(m).finish(),
            Error::Connect { context, source } => f
                .debug_struct("Connect")
                .field("context", context)
                .field("source", source)
                .finish(),
            Error::Rejected { status } => {
                f.debug_struct("Rejected").field("status", status).finish()
            }
            Error::ProxyRejected { status, reason } => f
                .debug_struct("ProxyRejected")
                .field("status", status)
                .field("reason", reason)
                .finish(),
            Error::Tls(e) => f.debug_tuple("Tls").field(e).finish(),
            Error::Fatal(why) => f.debug_tuple("Fatal").field(why).finish(),
            Error::Journal {
                context,
                source,
                message,
            } => f
                .debug_struct("Journal")
                .field("context", context)
                .field("source", source)
                .field("message", &message.as_ref().map(Redacted))
                .finish(),
            Error::Unsent { messages } => f
                .debug_struct("Unsent")
                .field(
                    "messages",
                    &messages.iter().map(Redacted).collect::<Vec<_>>(),
                )
                .finish(),
            Error::PossiblyLost { count, unsent } => f
                .debug_struct("PossiblyLost")
                .field("count", count)
                .field("unsent", &unsent.iter().map(Redacted).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::Serialize(_) => f.write_str("message could not be serialized to JSON"),
            Error::InvalidMessage { reason, .. } => write!(f, "invalid message: {reason}"),
            Error::OutboxFull { .. } => f.write_str("outbox is full; message handed back"),
            Error::Closed { .. } => f.write_str("link is closed"),
            Error::Timeout(d) => write!(f, "no reply within {d:?}"),
            Error::ConnectionLost => {
                f.write_str("connection lost before the reply arrived; outcome unknown")
            }
            Error::Remote(m) => {
                f.write_str(&remote_operator(m))?;
                let shown: Vec<String> = Error::REMOTE_ERROR_FIELDS
                    .iter()
                    .filter_map(|&name| Some(format!("{name}: {}", short_value(m.get(name)?)?)))
                    .take(3)
                    .collect();
                if !shown.is_empty() {
                    write!(f, " ({})", shown.join(", "))?;
                }
                Ok(())
            }
            Error::Connect { context, .. } => write!(f, "connection attempt failed: {context}"),
            Error::Rejected { status } => {
                write!(f, "server refused the WebSocket upgrade: HTTP {status}")
            }
            Error::ProxyRejected { status, reason } => {
                write!(f, "the proxy refused the tunnel: HTTP {status} {reason}")
            }
            Error::Tls(_) => f.write_str("TLS handshake failed"),
            Error::Fatal(why) => write!(f, "link ended: {why}"),
            Error::Journal { context, .. } => write!(f, "journal: {context} failed"),
            Error::Unsent { messages } => {
                write!(f, "closed with {} messages unsent", messages.len())
            }
            Error::PossiblyLost { count, unsent } => write!(
                f,
                "closed with {count} messages possibly lost (written, never confirmed) and {} unsent",
                unsent.len()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Serialize(e) => Some(e),
            Error::Connect { source, .. } => Some(source.as_ref()),
            Error::Tls(e) => Some(e.as_ref()),
            Error::Journal { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refused_messages_are_handed_back() {
        let m = serde_json::json!({"Operator": "X"});
        assert_eq!(
            Error::OutboxFull { message: m.clone() }.into_message(),
            Some(m.clone())
        );
        assert_eq!(
            Error::Closed {
                message: Some(m.clone())
            }
            .into_message(),
            Some(m)
        );
        assert_eq!(Error::ConnectionLost.into_message(), None);
    }

    #[test]
    fn a_remote_error_shows_the_operator_and_the_conventional_reason_fields() {
        let m = |v: Value| crate::message::decode(&v.to_string(), "Operator").unwrap();
        let e = Error::Remote(m(json!({"Operator": "XError", "reason": "no such post"})));
        assert_eq!(
            e.to_string(),
            r#"server answered with error operator "XError" (reason: "no such post")"#
        );
        let e = Error::Remote(m(json!({
            "Operator": "PayError", "errCode": 4012, "errMsg": "card\ndeclined",
            "token": "s3cret", "data": {"reason": "nested"}, "code": {"x": 1},
        })));
        assert_eq!(
            e.to_string(),
            r#"server answered with error operator "PayError" (errMsg: "card\ndeclined", errCode: 4012)"#
        );
        let long = "é".repeat(500);
        let e = Error::Remote(m(json!({"Operator": "XError", "message": long, "msg": "a",
            "error": "b", "reason": "c"})));
        let text = e.to_string();
        assert!(text.chars().count() < 200, "{text}");
        assert!(text.contains(r#"(reason: "c", message: "éé"#), "{text}");
        assert!(text.ends_with(r#"é…", msg: "a")"#), "{text}");
        assert!(
            !text.contains(r#"error: "b""#),
            "three fields at most: {text}"
        );
        let plain = Error::Remote(m(json!({"Operator": "XError", "secret": "s3cret"})));
        assert_eq!(
            plain.to_string(),
            r#"server answered with error operator "XError""#
        );
        // Debug and the log form stay redacted.
        let e = Error::Remote(m(json!({"Operator": "XError", "reason": "s3cret"})));
        assert!(!format!("{e:?}").contains("s3cret"));
        let wrapped = Error::on_open_failed(e);
        assert!(!wrapped.describe_for_log().contains("s3cret"));
        assert!(
            wrapped.describe_for_log().contains(
                r#"the on_open step failed: server answered with error operator "XError""#
            ),
            "{}",
            wrapped.describe_for_log()
        );
        assert_eq!(wrapped.remote().map(Message::operator), Some("XError"));
    }

    #[test]
    fn client_errors_are_permanent_but_throttling_is_not() {
        assert!(Error::Rejected { status: 403 }.is_permanent(false));
        assert!(!Error::Rejected { status: 429 }.is_permanent(false));
        assert!(!Error::Rejected { status: 503 }.is_permanent(false));
        assert!(!Error::Rejected { status: 403 }.is_permanent(true));
    }
}
