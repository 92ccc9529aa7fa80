//! Read-only views of a session for the simulator and the fuzz targets:
//! what is queued, in flight and awaited, to check invariants against a
//! reference model. Nothing here changes the session.

use super::Session;

impl Session {}
