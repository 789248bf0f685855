//! What to do with a client whose outbound queue is full, or that holds the most when
//! the node's buffered output passes its bound.

use std::str::FromStr;

/// What to do with a client whose outbound queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Keep only the newest tick per symbol and announce a `gap` (reason `slow_consumer`).
    #[default]
    Conflate,
    /// Close the connection with code 4008.
    Disconnect,
}

impl FromStr for SlowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "conflate" => Ok(SlowPolicy::Conflate),
            "disconnect" => Ok(SlowPolicy::Disconnect),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (conflate|disconnect)"
            )),
        }
    }
}
