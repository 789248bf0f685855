//! The fault hook of test builds (cargo feature `fault-hooks`): a session panics on a
//! chosen message, so that the tests can check that a panic stays within its
//! connection. Release builds have none of this.

use bytes::Bytes;

use crate::config::Settings;

/// The reader's hook: panics on a text message equal to `fault_panic_on`.
pub(super) fn reader(settings: &Settings, text: &[u8]) {
    if let Some(trigger) = &settings.fault_panic_on {
        if text == trigger.as_bytes() {
            panic!("fault hook: the session's reader panics");
        }
    }
}

/// The writer's hook: panics on a batch holding a message about the symbol
/// `fault_panic_on`.
pub(super) fn writer(settings: &Settings, batch: &[Bytes]) {
    if let Some(symbol) = &settings.fault_panic_on {
        let needle = format!(r#""symbol":"{symbol}""#);
        if batch
            .iter()
            .any(|m| memchr::memmem::find(m, needle.as_bytes()).is_some())
        {
            panic!("fault hook: the session's writer panics");
        }
    }
}
