//! Paces the clients that lose a compare-and-set race on the same project.
//!
//! With optimistic versions, N clients writing one project mostly waste their attempts: all
//! who read version v race for v + 1, one wins, and the rest re-read at once and collide
//! again. A `VERSION_CONFLICT` from `updateProject` therefore carries `retryAfterMs`: a place
//! in a virtual queue for that project, one write cycle after the previous loser's, so the
//! losers come back one at a time instead of as a herd.
//!
//! This is advice only: the database still decides every write, clients
//! may ignore it, and each server process keeps its own queue. Nothing here is persisted.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// One slot leaves room for a client's read and its write: twice the time this process takes
/// to commit an update, within these bounds.
const MIN_SLOT: Duration = Duration::from_micros(500);
const MAX_SLOT: Duration = Duration::from_millis(50);
/// Nobody is told to wait longer than this, however long the queue.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Rows whose queue has drained are forgotten once this many are tracked.
const PRUNE_AT: usize = 1024;
/// Weight of the newest sample in the moving average of update durations.
const EWMA_WEIGHT: f64 = 0.1;

pub struct Pacer {
    /// Moving average of how long a successful update takes in this process, in µs (`f64`
    /// bits). Every update records into it, so it takes no lock; a sample lost to a race only
    /// makes the average a little older.
    update_micros: AtomicU64,
    /// Per project id: when the next free slot starts. Touched only on conflicts.
    next_slot: Mutex<HashMap<i64, Instant>>,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer {
            update_micros: AtomicU64::new(1_000f64.to_bits()),
            next_slot: Mutex::new(HashMap::new()),
        }
    }
}

impl Pacer {
    /// A successful update took `took`.
    pub fn record_update(&self, took: Duration) {
        let average = f64::from_bits(self.update_micros.load(Relaxed));
        let sample = took.as_micros() as f64;
        let average = average + EWMA_WEIGHT * (sample - average);
        self.update_micros.store(average.to_bits(), Relaxed);
    }

    /// An update of `project` lost a race: how long its client should wait before re-reading.
    pub fn after_conflict(&self, project: i64) -> Duration {
        self.after_conflict_at(project, Instant::now())
    }

    fn after_conflict_at(&self, project: i64, now: Instant) -> Duration {
        let average = f64::from_bits(self.update_micros.load(Relaxed));
        let slot = Duration::from_micros((2.0 * average) as u64).clamp(MIN_SLOT, MAX_SLOT);
        let mut queues = self
            .next_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queues.len() >= PRUNE_AT {
            queues.retain(|_, next| *next > now);
        }
        let next = queues.entry(project).or_insert(now);
        let start = (*next).max(now).min(now + MAX_WAIT);
        *next = start + slot;
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losers_of_one_row_get_successive_slots() {
        let pacer = Pacer::default();
        for _ in 0..50 {
            pacer.record_update(Duration::from_millis(2));
        }
        let now = Instant::now();
        let waits: Vec<Duration> = (0..4).map(|_| pacer.after_conflict_at(7, now)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        for pair in waits.windows(2) {
            let gap = pair[1] - pair[0];
            // Two update times of ~2 ms (the average is still converging from 1 ms).
            assert!(
                gap > Duration::from_millis(3) && gap <= Duration::from_millis(4),
                "{waits:?}"
            );
        }
        // Another row has its own queue.
        assert_eq!(pacer.after_conflict_at(8, now), Duration::ZERO);
        // Once the queue has drained, the next loser goes at once.
        assert_eq!(
            pacer.after_conflict_at(7, now + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn waits_are_bounded() {
        let pacer = Pacer::default();
        pacer.record_update(Duration::from_secs(10));
        let now = Instant::now();
        let last = (0..1000)
            .map(|_| pacer.after_conflict_at(1, now))
            .last()
            .unwrap();
        assert!(last <= MAX_WAIT);
    }
}
