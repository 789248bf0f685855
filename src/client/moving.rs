//! Make before break: on the node's `reconnect`, the next connection is opened and
//! subscribed while the old one streams on, and the old one is closed once the new one
//! is live (see the module documentation of [`super`]).

use std::time::Instant;

use super::conn::{DialError, Up};
use super::{Client, Event, Lost, Move, Which};

impl Client {
    /// Takes what the task of the connection being moved to handed over; anything that
    /// ends it ends the move.
    pub(super) async fn on_next(&mut self, up: Option<Up>) {
        let why = match up {
            Some(Up::Open(write)) => {
                if let Some(c) = self.next.as_mut() {
                    c.opened(write);
                }
                match self.subscribe(Which::Next).await {
                    Ok(()) => return,
                    Err(e) => format!("sending the subscription failed: {e}"),
                }
            }
            Some(Up::Failed(DialError::Refused(e))) => e.to_string(),
            Some(Up::Failed(DialError::Failed(why))) => why,
            Some(Up::Frame(frame)) => match self.frame(Which::Next, frame).await {
                Ok(()) => return,
                Err(Lost::Retry(Some(code), reason)) => format!("close {code} {reason}"),
                Err(Lost::Retry(None, reason)) => reason,
                Err(Lost::Fatal(e)) => e.to_string(),
            },
            Some(Up::Lost(why)) => why,
            None => "the connection's reader ended".into(),
        };
        self.move_failed(why);
    }

    /// The connection being moved to failed: the client stays where it is.
    pub(super) fn move_failed(&mut self, error: String) {
        let Some(next) = self.next.take() else {
            return;
        };
        self.moving = None;
        self.pending.push_back(Event::MoveFailed {
            url: next.url,
            error,
        });
    }

    /// Starts a move the node asked for, and ends one whose new connection is live.
    pub(super) async fn advance_move(&mut self) {
        if let Some((reason, in_ms)) = self.st.move_asked.take() {
            self.start_move(reason, in_ms);
        }
        if self.moving.is_none() {
            return;
        }
        let live = match &self.next {
            Some(next) => next.live(),
            // The old connection closed first: the new one is in use already.
            None => self.conn.as_ref().is_some_and(|c| c.for_move && c.live()),
        };
        if live {
            self.complete_move().await;
        }
    }

    /// Opens the next connection (the next URL of the list), at once.
    fn start_move(&mut self, reason: String, in_ms: u64) {
        if !self.cfg.make_before_break || self.moving.is_some() {
            return;
        }
        let Some(conn) = &self.conn else {
            return;
        };
        let from = conn.url.clone();
        let next = self.dial(conn.url_idx + 1, true);
        self.pending.push_back(Event::Moving {
            from: from.clone(),
            to: next.url.clone(),
            reason,
            in_ms,
        });
        self.moving = Some(Move {
            from,
            started: Instant::now(),
        });
        self.next = Some(next);
    }

    /// The new connection is live: the old one is closed, the new one is the one in use.
    async fn complete_move(&mut self) {
        if let Some(next) = self.next.take() {
            if let Some(mut old) = self.conn.replace(next) {
                old.close(1000, "moved to the next connection").await;
            }
        }
        let (Some(m), Some(conn)) = (self.moving.take(), self.conn.as_mut()) else {
            return;
        };
        conn.for_move = false;
        self.url_idx = conn.url_idx;
        self.backoff.reset();
        self.st.counters.moves += 1;
        self.pending.push_back(Event::Moved {
            from: m.from,
            to: conn.url.clone(),
            node: conn.node.clone(),
            resumed: conn.resumed_epochs.len(),
            took: m.started.elapsed(),
        });
    }
}
