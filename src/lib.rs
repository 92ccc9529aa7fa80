//! longlink (docs written below)
mod backoff;
mod client;
mod config;
mod dispatch;
mod error;
mod io;
mod liveness;
mod message;
mod outbox;
mod pending;
mod state;

pub use client::{Client, Expect, Link, Subscription, WeakClient};
pub use config::ClientBuilder;
pub use error::{Error, Result};
pub use message::{InvalidFrame, Message};
pub use outbox::Overflow;
pub use state::{CloseReason, LinkState, Stats};
