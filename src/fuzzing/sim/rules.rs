//! The simulated link's settings: its rules (scaled down: a second of
//! heartbeat), and what the model knows of the endpoints.

use std::sync::Arc;
use std::time::Duration;

use tungstenite::Utf8Bytes;

use super::SimConfig;
use crate::backoff::BackoffPolicy;
use crate::session::Rules;

/// The heartbeat, scaled down: a probe after a second of silence, the
/// peer dead if nothing answers it within half a second.
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
pub(super) const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the `on_open` step may take.
pub(super) fn login_timeout(cfg: &SimConfig) -> Duration {
    if cfg.unlimited {
        Duration::MAX
    } else {
        Duration::from_millis(1500)
    }
}

/// The first retry after a working link drops comes within this.
pub(super) const SPREAD: Duration = Duration::from_millis(50);

/// Endpoints the link goes round: an attempt that fails moves to the next.
pub(super) const ENDPOINTS: usize = 2;

/// At least once: messages and bytes written ahead of the
/// acknowledgements, at most. Small (below most outbox capacities, and
/// about one padded message), so that the window fills and frees often.
pub(super) const WINDOW: (usize, usize) = (2, 250);

/// What the model knows of the endpoints since the last attempt began.
#[derive(Debug, Default)]
pub(super) struct Endpoints {
    /// The endpoint of the last attempt of this process.
    pub(super) last: Option<usize>,
    /// The link was open since.
    pub(super) opened: bool,
    /// The caller paused since.
    pub(super) paused: bool,
}

/// The session's rules for a setup (scaled down: a second of heartbeat).
pub(super) fn rules(cfg: &SimConfig) -> Arc<Rules> {
    let ms = Duration::from_millis;
    Arc::new(Rules {
        heartbeat_interval: HEARTBEAT_INTERVAL,
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        app_heartbeat: cfg.app_heartbeat.then(|| {
            (
                Utf8Bytes::from_static(r#"{"Operator":"Heart"}"#),
                "HeartOK".into(),
            )
        }),
        app_heartbeat_dispatch: false,
        backoff: BackoffPolicy {
            min: ms(100),
            max: ms(2000),
            healthy_after: ms(1000),
            max_attempts: cfg.max_attempts,
            spread: SPREAD,
        },
        retry_rejections: false,
        connect_timeout: if cfg.unlimited {
            Duration::MAX
        } else {
            ms(1000)
        },
        login_timeout: login_timeout(cfg),
        on_open: cfg.on_open,
        overflow: cfg.overflow,
        operator_field: "Operator".into(),
        error_suffix: "Error".into(),
        correlation_field: cfg.by_id.then(|| "reqId".into()),
        acks: cfg.at_least_once.then(|| ("Ack".into(), "msgId".into())),
        window: WINDOW,
        durable: cfg.durable,
        track_cap: cfg.track_cap,
        endpoints: ENDPOINTS,
    })
}
