//! Requests in flight per endpoint on this node (`proxy.max_requests_per_endpoint`): a request
//! holds a slot from its routing until the end of its response body, or of its tunnel, so that
//! one endpoint's flood cannot take every connection and task of the node from the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Slots taken per endpoint; an endpoint without requests in flight has no entry, so the table
/// holds no more names than there are requests.
#[derive(Debug)]
pub(crate) struct EndpointLoad {
    limit: usize,
    in_flight: Mutex<HashMap<String, usize>>,
}

impl EndpointLoad {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            in_flight: Mutex::default(),
        })
    }

    /// A slot for one request to `endpoint`, or `None` when its requests fill the limit.
    pub(crate) fn try_acquire(self: &Arc<Self>, endpoint: &str) -> Option<Slot> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match in_flight.get_mut(endpoint) {
            Some(count) if *count >= self.limit => return None,
            Some(count) => *count += 1,
            None if self.limit == 0 => return None,
            None => {
                in_flight.insert(endpoint.to_owned(), 1);
            }
        }
        Some(Slot {
            load: self.clone(),
            endpoint: endpoint.to_owned(),
        })
    }

    /// Requests to `endpoint` in flight now.
    #[cfg(test)]
    fn count(&self, endpoint: &str) -> usize {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.get(endpoint).copied().unwrap_or(0)
    }
}

/// One request's place in its endpoint's limit, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    load: Arc<EndpointLoad>,
    endpoint: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self
            .load
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_flight.get_mut(&self.endpoint) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_per_endpoint_and_given_back() {
        let load = EndpointLoad::new(2);
        let a1 = load.try_acquire("a").unwrap();
        let _a2 = load.try_acquire("a").unwrap();
        assert!(load.try_acquire("a").is_none());
        // Another endpoint has its own slots.
        let b = load.try_acquire("b").unwrap();
        drop(a1);
        assert_eq!(load.count("a"), 1);
        assert!(load.try_acquire("a").is_some());
        drop(b);
        assert!(load.in_flight.lock().unwrap().get("b").is_none());
    }
}
