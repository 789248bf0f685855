//! WebSocket close codes: what each one means in this protocol, and whether a client
//! should reconnect after it. The server closes with these; the Rust client decides
//! whether to reconnect by [`CloseCode::reconnect`], not by literal numbers.

use std::fmt;

/// A close code the server sends, or a client may receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure (the client closed, or the connection was silent past its
    /// heartbeat). Reconnect when the client still wants data.
    Normal,
    /// 1001: the server is shutting down. Reconnect with backoff and jitter.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol. Do not reconnect unchanged.
    ProtocolError,
    /// 1003: a data type this endpoint does not accept. Do not reconnect unchanged.
    Unsupported,
    /// 1007: a message whose data was not valid (e.g. text that is not UTF-8). Do not
    /// reconnect unchanged.
    InvalidData,
    /// 1008: policy (rate-limit abuse, token expired while connected). Do not reconnect
    /// without a change (slow down, get a new token).
    Policy,
    /// 1009: a message over the size limit. Do not resend it.
    TooBig,
    /// 1011: internal server error. Reconnect with backoff and jitter.
    Internal,
    /// 4008: slow consumer disconnected (the `disconnect` slow-consumer policy).
    /// Reconnect with backoff and jitter, and read faster.
    SlowConsumer,
    /// Any other code: reconnect with backoff.
    Other(u16),
}

impl CloseCode {
    /// Every code the protocol names, for documentation and tests.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Unsupported,
        CloseCode::InvalidData,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::SlowConsumer,
    ];

    /// The numeric code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidData => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::SlowConsumer => 4008,
            CloseCode::Other(c) => c,
        }
    }

    /// The code for a number received on the wire.
    pub const fn from_code(code: u16) -> CloseCode {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1003 => CloseCode::Unsupported,
            1007 => CloseCode::InvalidData,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Internal,
            4008 => CloseCode::SlowConsumer,
            c => CloseCode::Other(c),
        }
    }

    /// Whether a client should reconnect (with backoff and jitter) after this code.
    /// False where reconnecting unchanged would meet the same refusal.
    pub const fn reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::ProtocolError
                | CloseCode::Unsupported
                | CloseCode::InvalidData
                | CloseCode::Policy
                | CloseCode::TooBig
        )
    }

    /// What the code means, in a few words.
    pub const fn meaning(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::Unsupported => "unsupported data",
            CloseCode::InvalidData => "invalid data",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::SlowConsumer => "slow consumer disconnected",
            CloseCode::Other(_) => "other",
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode::from_code(code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_say_whether_to_reconnect() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), c);
        }
        let retry: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| c.reconnect())
            .map(|c| c.code())
            .collect();
        assert_eq!(retry, [1000, 1001, 1011, 4008]);
        assert!(CloseCode::from_code(4999).reconnect());
        assert_eq!(CloseCode::from_code(4999), CloseCode::Other(4999));
    }
}
