//! A budget of bytes that work holds while in progress, taken at once or refused (never
//! queued): the node's in-flight event bodies and the API's request bodies being read.
//! Counted in KiB permits of a semaphore, so a budget of gigabytes fits its permit count.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes available to work in progress.
#[derive(Clone)]
pub struct ByteBudget {
    kib: Arc<Semaphore>,
    kib_max: usize,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
pub struct Taken {
    _permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `bytes_max` bytes (rounded up to whole KiB).
    pub fn new(bytes_max: usize) -> ByteBudget {
        let kib_max = bytes_max.div_ceil(1024);
        ByteBudget {
            kib: Arc::new(Semaphore::new(kib_max)),
            kib_max,
        }
    }

    /// Takes `bytes` (rounded up to whole KiB, at least one), or `None` if they are not
    /// available now.
    pub fn try_take(&self, bytes: usize) -> Option<Taken> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.kib)
            .try_acquire_many_owned(kib)
            .ok()
            .map(|permit| Taken { _permit: permit })
    }

    /// The budget, bytes.
    pub fn bytes_max(&self) -> usize {
        self.kib_max * 1024
    }

    /// Bytes taken now.
    pub fn taken_bytes(&self) -> usize {
        (self.kib_max - self.kib.available_permits()) * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_taken_in_kib_and_given_back_on_drop() {
        let budget = ByteBudget::new(10 * 1024);
        let first = budget.try_take(4 * 1024).expect("fits");
        let second = budget
            .try_take(5 * 1024 + 1)
            .expect("rounded up to 6 KiB, fits");
        assert_eq!(budget.taken_bytes(), 10 * 1024);
        assert!(budget.try_take(1).is_none(), "spent");
        drop(second);
        assert!(budget.try_take(6 * 1024).is_some());
        drop(first);
        assert_eq!(budget.taken_bytes(), 0);
        assert!(
            budget.try_take(11 * 1024).is_none(),
            "never more than the budget"
        );
    }
}
