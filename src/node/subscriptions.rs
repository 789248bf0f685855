//! Local interest per symbol: how many of this node's sessions hold each symbol. The
//! first one makes the bus watch the symbol's channel, the last one leaving unwatches
//! it.
//!
//! Each symbol has its own lock, held across the bus call that starts or stops its
//! channel, so a subscribe to one symbol never waits for another symbol's round trip to
//! Redis. A call that takes several locks takes them in symbol order.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::{Mutex, MutexGuard};

use crate::tick::Symbol;

/// Local subscriber counts over a fixed set of symbols.
pub struct Interest {
    counts: HashMap<Symbol, Mutex<usize>>,
}

impl Interest {
    /// No interest yet in any of `symbols`.
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a Symbol>) -> Interest {
        Interest {
            counts: symbols
                .into_iter()
                .map(|s| (s.clone(), Mutex::new(0)))
                .collect(),
        }
    }

    /// Local subscribers of `symbol` now.
    pub fn count(&self, symbol: &str) -> usize {
        self.counts
            .get(symbol)
            .and_then(|m| m.try_lock().ok().map(|n| *n))
            .unwrap_or(0)
    }

    /// Symbols with at least one local subscriber.
    pub fn watched(&self) -> usize {
        self.counts
            .values()
            .filter(|m| m.try_lock().map_or(true, |n| *n > 0))
            .count()
    }

    /// One more local subscriber for each of `symbols` (distinct). `watch` is called
    /// once, with the symbols that had none, while only their locks are held. When it
    /// fails, nothing changed: counts taken for the other symbols are given back.
    pub async fn acquire<E, F, Fut>(&self, symbols: &[Symbol], watch: F) -> Result<(), E>
    where
        F: FnOnce(Vec<Symbol>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut taken: Vec<Symbol> = Vec::with_capacity(symbols.len());
        let mut fresh: Vec<&Symbol> = Vec::new();
        for s in symbols {
            let Some(m) = self.counts.get(s) else {
                continue;
            };
            let mut n = m.lock().await;
            if *n > 0 {
                *n += 1;
                taken.push(s.clone());
            } else {
                fresh.push(s);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        fresh.sort_unstable();
        let mut held: Vec<(Symbol, MutexGuard<'_, usize>)> = Vec::with_capacity(fresh.len());
        for s in fresh {
            let mut n = self.counts[s].lock().await;
            if *n > 0 {
                // Watched meanwhile by another session.
                *n += 1;
                taken.push(s.clone());
            } else {
                held.push((s.clone(), n));
            }
        }
        if held.is_empty() {
            return Ok(());
        }
        let names: Vec<Symbol> = held.iter().map(|(s, _)| s.clone()).collect();
        match watch(names).await {
            Ok(()) => {
                for (_, mut n) in held {
                    *n = 1;
                }
                Ok(())
            }
            Err(e) => {
                drop(held);
                // Give back what this call took; a count reaching zero that way is
                // unwatched like any other.
                self.release(&taken, |gone| async move {
                    tracing::debug!(symbols = gone.len(), "rolled back a failed subscribe");
                    gone
                })
                .await;
                Err(e)
            }
        }
    }

    /// One local subscriber fewer for each of `symbols` (distinct). `unwatch` is called
    /// once, with the symbols that now have none, while their locks are held; it
    /// returns the symbols it could not unwatch (they are counted as unwatched all the
    /// same: the bus drops a channel nobody wants at its next reconnection).
    pub async fn release<F, Fut>(&self, symbols: &[Symbol], unwatch: F)
    where
        F: FnOnce(Vec<Symbol>) -> Fut,
        Fut: Future<Output = Vec<Symbol>>,
    {
        let mut sorted: Vec<&Symbol> = symbols.iter().collect();
        sorted.sort_unstable();
        let mut held: Vec<(Symbol, MutexGuard<'_, usize>)> = Vec::new();
        for s in sorted {
            let Some(m) = self.counts.get(s) else {
                continue;
            };
            let mut n = m.lock().await;
            match *n {
                0 => {}
                1 => {
                    *n = 0;
                    held.push((s.clone(), n));
                }
                _ => *n -= 1,
            }
        }
        if held.is_empty() {
            return;
        }
        let names: Vec<Symbol> = held.iter().map(|(s, _)| s.clone()).collect();
        let failed = unwatch(names).await;
        if !failed.is_empty() {
            tracing::warn!(
                symbols = failed.len(),
                "unwatching failed; the bus drops them when it reconnects"
            );
        }
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn syms(names: &[&str]) -> Vec<Symbol> {
        names.iter().map(|s| Symbol::from(*s)).collect()
    }

    #[tokio::test]
    async fn first_subscriber_watches_last_one_unwatches_and_failures_change_nothing() {
        let all = syms(&["A", "B", "C"]);
        let interest = Interest::new(&all);
        let calls = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let log = |what: &'static str| {
            let calls = calls.clone();
            move |s: Vec<Symbol>| {
                let joined: Vec<&str> = s.iter().map(|x| &**x).collect();
                calls.lock().push(format!("{what} {}", joined.join(",")));
                async move { Ok::<(), ()>(()) }
            }
        };
        interest
            .acquire(&syms(&["B", "A"]), log("watch"))
            .await
            .unwrap();
        interest
            .acquire(&syms(&["A", "C"]), log("watch"))
            .await
            .unwrap();
        assert_eq!(interest.count("A"), 2);
        assert_eq!(interest.watched(), 3);
        // Held symbols only count: no bus call either way.
        let no_call = |_: Vec<Symbol>| async { panic!("no bus call expected") };
        interest
            .acquire::<(), _, _>(&syms(&["A", "B"]), no_call)
            .await
            .unwrap();
        interest
            .release(&syms(&["A", "B"]), |_| async {
                panic!("no bus call expected")
            })
            .await;
        assert_eq!((interest.count("A"), interest.count("B")), (2, 1));
        // A failing watch of a fresh symbol gives back what the call took.
        let interest2 = Interest::new(&all);
        interest2
            .acquire(&syms(&["A"]), log("watch"))
            .await
            .unwrap();
        let r = interest2
            .acquire(&syms(&["A", "B"]), |_| async { Err::<(), &str>("down") })
            .await;
        assert_eq!(r, Err("down"));
        assert_eq!(interest2.count("A"), 1, "A's count given back");
        assert_eq!(interest2.count("B"), 0);
        let unwatched = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let u = unwatched.clone();
        interest
            .release(&syms(&["C", "A", "B"]), move |s| async move {
                u.lock().extend(s);
                Vec::new()
            })
            .await;
        assert_eq!(
            *unwatched.lock(),
            syms(&["B", "C"]),
            "the last ones leaving"
        );
        assert_eq!(interest.watched(), 1);
        assert_eq!(interest.count("A"), 1);
        assert_eq!(
            *calls.lock(),
            vec!["watch A,B".to_string(), "watch C".into(), "watch A".into()]
        );
    }
}
