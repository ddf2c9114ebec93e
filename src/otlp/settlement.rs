//! Settlements: what waits for an export request to be done by every sending queue it
//! entered. Each queue that takes the request enlists; each send that ends (delivered, or
//! failed for good) settles. When the last copy of the request is gone, the settlement's
//! action runs once with the [`Outcome`]: a worker with a log records the export, a router
//! that waits for results answers its client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How an export request ended, over every sending queue it entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every queue that took it had it accepted by its backend.
    Delivered,
    /// Every queue is done with it, and at least one could not deliver it (refused at the
    /// queue, or failed for good after its retries).
    Failed,
    /// Dropped before every queue was done (abandoned at shutdown), or no queue took it.
    Abandoned,
}

type Action = Box<dyn FnOnce(Outcome) + Send + Sync>;

/// Counts the queues a request entered and the sends that ended; runs its action once
/// when dropped.
pub struct Settlement {
    enlisted: AtomicU64,
    settled: AtomicU64,
    failed: AtomicBool,
    action: Option<Action>,
}

impl Settlement {
    pub fn new(action: impl FnOnce(Outcome) + Send + Sync + 'static) -> Settlement {
        Settlement {
            enlisted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            action: Some(Box::new(action)),
        }
    }

    /// One more queue took the request.
    pub fn enlist(&self) {
        self.enlisted.fetch_add(1, Ordering::AcqRel);
    }

    /// One queue's send ended: delivered or not.
    pub fn settle(&self, delivered: bool) {
        if !delivered {
            self.failed.store(true, Ordering::Release);
        }
        self.settled.fetch_add(1, Ordering::AcqRel);
    }

    /// A queue could not take the request.
    pub fn refuse(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("enlisted", &self.enlisted)
            .field("settled", &self.settled)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let enlisted = *self.enlisted.get_mut();
        let outcome = if enlisted == 0 || *self.settled.get_mut() < enlisted {
            Outcome::Abandoned
        } else if *self.failed.get_mut() {
            Outcome::Failed
        } else {
            Outcome::Delivered
        };
        if let Some(action) = self.action.take() {
            action(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn recorded() -> (Arc<Mutex<Vec<Outcome>>>, Settlement) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let s = Settlement::new(move |o| into.lock().unwrap().push(o));
        (seen, s)
    }

    #[test]
    fn the_outcome_is_the_worst_of_every_queue() {
        let (seen, s) = recorded();
        s.enlist();
        s.enlist();
        s.settle(true);
        s.settle(true);
        drop(s);
        let (failed, s) = recorded();
        s.enlist();
        s.enlist();
        s.settle(true);
        s.settle(false);
        drop(s);
        let (refused, s) = recorded();
        s.enlist();
        s.refuse();
        s.settle(true);
        drop(s);
        let (half, s) = recorded();
        s.enlist();
        s.enlist();
        s.settle(true);
        drop(s);
        let (unsent, s) = recorded();
        drop(s);
        assert_eq!(*seen.lock().unwrap(), [Outcome::Delivered]);
        assert_eq!(*failed.lock().unwrap(), [Outcome::Failed]);
        assert_eq!(*refused.lock().unwrap(), [Outcome::Failed]);
        assert_eq!(*half.lock().unwrap(), [Outcome::Abandoned]);
        assert_eq!(*unsent.lock().unwrap(), [Outcome::Abandoned]);
    }
}
