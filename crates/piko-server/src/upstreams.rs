//! The node's routing table: the upstream sessions connected to this node, per endpoint, served
//! round-robin.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use piko_mux::Session;
use tokio::sync::watch;

/// Identifies one registration, so that removing it twice (on GoAway, then when the session
/// ends) is harmless (Piko decremented its counts twice: spec §5.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamId(u64);

#[derive(Debug)]
struct Endpoint<S> {
    upstreams: Vec<(UpstreamId, S)>,
    cursor: usize,
}

#[derive(Debug)]
struct Table<S> {
    endpoints: HashMap<String, Endpoint<S>>,
    next_id: u64,
}

/// Upstream sessions connected to this node, by endpoint ID. (Generic over the session type only
/// so that the routing rules can be tested with plain values.)
#[derive(Debug)]
pub struct Upstreams<S = Session> {
    table: Mutex<Table<S>>,
    /// Bumped on every change, so tests and status code can await one.
    changes: watch::Sender<u64>,
}

impl<S> Default for Upstreams<S> {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                endpoints: HashMap::new(),
                next_id: 0,
            }),
            changes: watch::Sender::new(0),
        }
    }
}

impl<S: Clone> Upstreams<S> {
    fn table(&self) -> std::sync::MutexGuard<'_, Table<S>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `session` as an upstream of `endpoint`.
    pub fn add(&self, endpoint: &str, session: S) -> UpstreamId {
        let id = {
            let mut table = self.table();
            let id = UpstreamId(table.next_id);
            table.next_id += 1;
            table
                .endpoints
                .entry(endpoint.to_owned())
                .or_insert_with(|| Endpoint {
                    upstreams: Vec::new(),
                    cursor: 0,
                })
                .upstreams
                .push((id, session));
            id
        };
        self.changes.send_modify(|version| *version += 1);
        id
    }

    /// Unregisters an upstream; false if it was not registered (already removed).
    pub fn remove(&self, endpoint: &str, id: UpstreamId) -> bool {
        let removed = {
            let mut table = self.table();
            let Some(entry) = table.endpoints.get_mut(endpoint) else {
                return false;
            };
            let Some(index) = entry.upstreams.iter().position(|(each, _)| *each == id) else {
                return false;
            };
            entry.upstreams.remove(index);
            if entry.upstreams.is_empty() {
                table.endpoints.remove(endpoint);
            } else if index < entry.cursor {
                // Keep the rotation where it was for everyone after the removed one.
                entry.cursor -= 1;
            }
            true
        };
        if removed {
            self.changes.send_modify(|version| *version += 1);
        }
        removed
    }

    /// The next upstream of `endpoint` in round-robin order.
    pub fn select(&self, endpoint: &str) -> Option<S> {
        let mut table = self.table();
        let entry = table.endpoints.get_mut(endpoint)?;
        let index = entry.cursor % entry.upstreams.len();
        entry.cursor = (index + 1) % entry.upstreams.len();
        Some(entry.upstreams[index].1.clone())
    }

    /// Upstreams registered for `endpoint`.
    pub fn count(&self, endpoint: &str) -> usize {
        self.table()
            .endpoints
            .get(endpoint)
            .map_or(0, |e| e.upstreams.len())
    }

    /// Endpoints with at least one upstream, and upstreams in all.
    pub fn totals(&self) -> (usize, usize) {
        let table = self.table();
        let upstreams = table.endpoints.values().map(|e| e.upstreams.len()).sum();
        (table.endpoints.len(), upstreams)
    }

    /// Every endpoint with its upstream count.
    pub fn endpoints(&self) -> Vec<(String, usize)> {
        let table = self.table();
        let mut endpoints: Vec<_> = table
            .endpoints
            .iter()
            .map(|(id, e)| (id.clone(), e.upstreams.len()))
            .collect();
        endpoints.sort();
        endpoints
    }

    /// A receiver that changes whenever an upstream is added or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every registered session.
    pub(crate) fn sessions(&self) -> Vec<S> {
        self.table()
            .endpoints
            .values()
            .flat_map(|e| e.upstreams.iter().map(|(_, s)| s.clone()))
            .collect()
    }

    /// Takes every session out of the table (shutdown).
    pub(crate) fn drain(&self) -> Vec<S> {
        let sessions: Vec<S> = {
            let mut table = self.table();
            table
                .endpoints
                .drain()
                .flat_map(|(_, e)| e.upstreams)
                .map(|(_, s)| s)
                .collect()
        };
        self.changes.send_modify(|version| *version += 1);
        sessions
    }
}

impl Upstreams {
    /// Streams open on every upstream session (a scrape's reading, not kept up to date).
    pub fn open_streams(&self) -> usize {
        self.table()
            .endpoints
            .values()
            .flat_map(|e| &e.upstreams)
            .map(|(_, session)| session.num_streams())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_survives_removal() {
        let upstreams = Upstreams::<u32>::default();
        let ids: Vec<UpstreamId> = (0..3).map(|n| upstreams.add("e", n)).collect();
        assert_eq!(upstreams.count("e"), 3);
        assert_eq!(upstreams.select("missing"), None);
        let picks: Vec<u32> = (0..4).filter_map(|_| upstreams.select("e")).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        // The next turn is 1's; removing 0 (before the cursor) keeps it 1's.
        assert!(upstreams.remove("e", ids[0]));
        assert_eq!(upstreams.select("e"), Some(1));
        assert_eq!(upstreams.select("e"), Some(2));
        assert_eq!(upstreams.select("e"), Some(1));
    }

    #[test]
    fn removal_is_idempotent_and_empty_endpoints_disappear() {
        let upstreams = Upstreams::<u32>::default();
        let a = upstreams.add("e", 1);
        let b = upstreams.add("e", 2);
        assert!(upstreams.remove("e", a));
        assert!(
            !upstreams.remove("e", a),
            "a second removal changes nothing"
        );
        assert_eq!(upstreams.count("e"), 1);
        assert_eq!(upstreams.endpoints(), [("e".to_string(), 1)]);
        assert!(upstreams.remove("e", b));
        assert!(upstreams.endpoints().is_empty());
        assert_eq!(upstreams.select("e"), None);
    }

    #[tokio::test]
    async fn changes_are_observable() {
        let upstreams = Upstreams::<u32>::default();
        let mut changes = upstreams.subscribe();
        let id = upstreams.add("e", 7);
        changes.changed().await.unwrap();
        upstreams.remove("e", id);
        changes.changed().await.unwrap();
        assert_eq!(*changes.borrow(), 2);
    }
}
