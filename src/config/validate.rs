//! Checking the whole configuration once, before any connection: every
//! problem is reported together.

use std::sync::Arc;

use super::url::check_url;
use super::{ClientBuilder, Config};
use crate::Error;
use crate::dispatch::MAX_CAPACITY;
use crate::tunnel::HttpProxy;

/// The largest read buffer: tungstenite allocates it at every connect.
const MAX_READ_BUFFER: usize = 64 << 20;

impl ClientBuilder {
    pub(super) fn validate(mut self) -> Result<Config, Error> {
        let mut from_env = None;
        let mut url = None;
        // With several endpoints, the first stands for the link (logs, the
        // proxy from the environment); every one is checked.
        if let Some(first) = self.cfg.endpoints.first() {
            self.cfg.url = first.clone();
        }
        let mut more = Vec::new();
        for e in self.cfg.endpoints.iter().skip(1) {
            match check_url(e) {
                Ok(checked) => more.push(checked),
                Err(problem) => self.problems.push(problem),
            }
        }
        let c = &self.cfg;
        match check_url(&c.url) {
            Ok(checked) => {
                if c.proxy.is_none()
                    && c.proxy_from_env
                    && let Ok(u) = checked.parse::<tungstenite::http::Uri>()
                {
                    let tls = u.scheme_str() == Some("wss");
                    let host = u.host().unwrap_or_default();
                    match HttpProxy::from_env(tls, host, |k| std::env::var(k).ok()) {
                        Ok(p) => from_env = p,
                        Err(e) => self
                            .problems
                            .push(format!("proxy from the environment: {e}")),
                    }
                }
                url = Some(checked);
            }
            Err(problem) => self.problems.push(problem),
        }
        for (name, d) in [
            ("connect_timeout", c.rules.connect_timeout),
            ("heartbeat_interval", c.rules.heartbeat_interval),
            ("heartbeat_timeout", c.rules.heartbeat_timeout),
            ("login_timeout", c.rules.login_timeout),
            ("request_timeout", c.request_timeout),
        ] {
            if d.is_zero() {
                self.problems
                    .push(format!("{name} must be greater than zero"));
            }
        }
        if c.rules.backoff.max_attempts == Some(0) {
            self.problems
                .push("reconnect_max_attempts must be at least 1".into());
        }
        if c.rules.backoff.min > c.rules.backoff.max {
            self.problems
                .push("reconnect_min_delay must not exceed reconnect_max_delay".into());
        }
        for (name, n) in [
            ("outbox_capacity", c.outbox_capacity),
            ("outbox_max_bytes", c.outbox_max_bytes),
            ("dispatch_capacity", c.dispatch_capacity),
            ("max_message_size", c.max_message_size),
            ("read_buffer_size", c.read_buffer_size),
        ] {
            if n == 0 {
                self.problems
                    .push(format!("{name} must be greater than zero"));
            }
        }
        // Allocated up front: per receiver, per connection.
        for (name, n, max, shown) in [
            (
                "dispatch_capacity",
                c.dispatch_capacity,
                MAX_CAPACITY,
                "1,048,576",
            ),
            (
                "read_buffer_size",
                c.read_buffer_size,
                MAX_READ_BUFFER,
                "64 MiB",
            ),
        ] {
            if n > max {
                self.problems.push(format!(
                    "{name} must be at most {shown} (it is allocated up front)"
                ));
            }
        }
        if c.rules.operator_field.is_empty() {
            self.problems
                .push("operator_field must not be empty".into());
        }
        if let Some(f) = &c.rules.correlation_field
            && (f.is_empty() || *f == c.rules.operator_field)
        {
            self.problems
                .push("correlation_field must be a non-empty field other than the operator".into());
        }
        if c.at_least_once {
            let f = &c.msg_id_field;
            if f.is_empty()
                || *f == c.rules.operator_field
                || c.rules.correlation_field.as_ref() == Some(f)
            {
                self.problems.push(
                    "message_id_field must be a non-empty field other than the operator and correlation fields".into(),
                );
            }
            let r = &c.msg_run_field;
            if r.is_empty()
                || **r == **f
                || **r == *c.rules.operator_field
                || c.rules.correlation_field.as_deref() == Some(&**r)
            {
                self.problems.push(
                    "message_run_field must be a non-empty field other than the operator, correlation and message id fields".into(),
                );
            }
            if c.rules.window.0 == 0 || c.rules.window.1 == 0 {
                self.problems
                    .push("in_flight_window must allow at least one message and one byte".into());
            }
            if c.ack_operator.is_empty() {
                self.problems.push("ack_operator must not be empty".into());
            }
        }
        if from_env.is_some() {
            self.cfg.proxy = from_env.map(Box::new);
        }
        // What the rules derive from the rest of the configuration.
        let c = &mut self.cfg;
        let rules = Arc::make_mut(&mut c.rules);
        rules.on_open = c.on_open.is_some();
        rules.acks = c
            .at_least_once
            .then(|| (c.ack_operator.clone(), c.msg_id_field.clone()));
        rules.durable = c.journal.is_some();
        rules.endpoints = c.endpoints.len().max(1);
        // Every connect uses the checked, normalised URLs.
        if let Some(url) = url {
            self.cfg.endpoints = if more.is_empty() {
                Vec::new()
            } else {
                std::iter::once(url.clone()).chain(more).collect()
            };
            self.cfg.url = url;
        }
        if self.problems.is_empty() {
            Ok(self.cfg)
        } else {
            Err(Error::InvalidConfig(self.problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_builder_keeps_the_normalised_url() {
        let cfg = ClientBuilder::new("WSS://h.example/ws").validate().unwrap();
        assert_eq!(cfg.url, "wss://h.example/ws");
        let e = ClientBuilder::new("ws://127.0.0.1:99999")
            .validate()
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig(w) if w.contains("ws://127.0.0.1:99999")),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_checked_normalised_and_the_first_is_the_url() {
        let one = ClientBuilder::new("WS://a.example/ws").validate().unwrap();
        assert_eq!(one.endpoint(0), "ws://a.example/ws");
        assert!(one.endpoints.is_empty(), "one URL needs no list");
        let two = ClientBuilder::new("ws://ignored.example")
            .endpoints(["WS://a.example/ws", "WSS://b.example/ws"])
            .validate()
            .unwrap();
        assert_eq!(two.url, "ws://a.example/ws");
        assert_eq!(
            [two.endpoint(0), two.endpoint(1)],
            ["ws://a.example/ws", "wss://b.example/ws"]
        );
        assert_eq!(two.rules.endpoints, 2);
        let shown = format!("{two:?}");
        assert!(
            shown.contains(r#"["ws://a.example/ws", "wss://b.example/ws"]"#),
            "{shown}"
        );
    }

    #[test]
    fn sizes_allocated_up_front_are_bounded_with_a_clear_error_never_a_panic() {
        // A receiver made on the builder before the check does not panic.
        let mut b = ClientBuilder::new("ws://x")
            .dispatch_capacity(usize::MAX)
            .read_buffer_size(usize::MAX);
        let _receiver = b.receiver_any();
        let text = b.validate().unwrap_err().to_string();
        assert!(
            text.contains("dispatch_capacity must be at most 1,048,576"),
            "{text}"
        );
        assert!(
            text.contains("read_buffer_size must be at most 64 MiB"),
            "{text}"
        );
        let at_most = ClientBuilder::new("ws://x")
            .dispatch_capacity(1 << 20)
            .read_buffer_size(64 << 20);
        assert!(at_most.validate().is_ok());
    }

    #[test]
    fn builder_reports_every_problem_at_once() {
        let err = ClientBuilder::new("http://x")
            .heartbeat_interval(Duration::ZERO)
            .outbox_capacity(0)
            .validate()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ws://"), "{text}");
        assert!(text.contains("heartbeat_interval"), "{text}");
        assert!(text.contains("outbox_capacity"), "{text}");
    }

    #[test]
    fn a_run_field_clashing_with_another_field_is_refused() {
        for field in ["", "msgId", "Operator", "reqId"] {
            let err = ClientBuilder::new("ws://x")
                .at_least_once(true)
                .correlation_field("reqId")
                .message_run_field(field)
                .validate()
                .unwrap_err();
            assert!(
                err.to_string().contains("message_run_field"),
                "{field}: {err}"
            );
        }
    }
}
