//! The closed-loop load driver: N concurrent clients, each issuing its next operation as soon as
//! the previous one answers, for a warm-up and then a measured window. Throughput and latency
//! count the operations that complete inside the window; errors count everywhere, warm-up
//! included, since any error fails a target.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use crate::{
    client::CallError,
    error::{Context, Result},
};

/// In-flight operations get this long after the window closes before the run is abandoned.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

/// How long to warm up and how long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one step of a worker achieved.
pub enum Outcome {
    /// Finished one operation worth `units` (1 per request, or bytes for uploads).
    Done { units: u64 },
    /// Gave up because the run was over (a retry loop past its deadline); not an error.
    Stopped,
}

/// One simulated client with its own state (ids, versions, counters).
pub trait Worker: Send + 'static {
    /// Performs one operation. `deadline` is the end of the run, for steps that retry.
    fn step(
        &mut self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Outcome, CallError>> + Send;
}

/// Latencies of successful operations, sorted, in microseconds.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    pub fn from_unsorted(mut micros: Vec<u64>) -> Latencies {
        micros.sort_unstable();
        Latencies(micros)
    }

    /// The `q` quantile (0 < q ≤ 1), nearest-rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        Some(Duration::from_micros(self.0[rank - 1]))
    }
}

/// Errors grouped by kind, with the first message of each kind.
#[derive(Debug, Default)]
pub struct ErrorTally(BTreeMap<String, (u64, String)>);

impl ErrorTally {
    pub fn add(&mut self, e: &CallError) {
        self.0
            .entry(e.kind())
            .or_insert_with(|| (0, e.to_string()))
            .0 += 1;
    }

    fn merge(&mut self, other: ErrorTally) {
        for (kind, (n, sample)) in other.0 {
            self.0.entry(kind).or_insert((0, sample)).0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }

    /// `"3× UNAVAILABLE (first: …)"` lines.
    pub fn summary(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(kind, (n, sample))| format!("{n}× {kind} (first: {sample})"))
            .collect()
    }
}

/// The outcome of a load run.
#[derive(Debug)]
pub struct LoadResult {
    /// Operations completed inside the measured window.
    pub ops: u64,
    /// Their units (requests or bytes).
    pub units: u64,
    pub window: Duration,
    pub latencies: Latencies,
    pub errors: ErrorTally,
}

impl LoadResult {
    /// Adds `other`'s window, operations, latencies and errors to this one (two runs of the
    /// same workload reported as one).
    pub fn merge(&mut self, other: LoadResult) {
        self.ops += other.ops;
        self.units += other.units;
        self.window += other.window;
        self.errors.merge(other.errors);
        let mut micros = std::mem::take(&mut self.latencies.0);
        micros.extend(other.latencies.0);
        self.latencies = Latencies::from_unsorted(micros);
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }

    pub fn units_per_sec(&self) -> f64 {
        self.units as f64 / self.window.as_secs_f64()
    }
}

struct WorkerReport {
    ops: u64,
    units: u64,
    micros: Vec<u64>,
    errors: ErrorTally,
}

/// Runs every worker concurrently through the warm-up and the measured window.
pub async fn run<W: Worker>(workers: Vec<W>, phases: Phases) -> Result<LoadResult> {
    let start = Instant::now();
    let window_start = start + phases.warmup;
    let end = window_start + phases.measure;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(drive(worker, window_start, end)))
        .collect();
    let joined = tokio::time::timeout(
        phases.warmup + phases.measure + DRAIN_LIMIT,
        futures::future::join_all(tasks),
    )
    .await
    .context("the load run did not finish in time")?;

    let mut result = LoadResult {
        ops: 0,
        units: 0,
        window: phases.measure,
        latencies: Latencies::default(),
        errors: ErrorTally::default(),
    };
    let mut micros = Vec::new();
    for report in joined {
        let report = report.context("a load worker panicked")?;
        result.ops += report.ops;
        result.units += report.units;
        result.errors.merge(report.errors);
        micros.extend(report.micros);
    }
    result.latencies = Latencies::from_unsorted(micros);
    Ok(result)
}

async fn drive<W: Worker>(mut worker: W, window_start: Instant, end: Instant) -> WorkerReport {
    let mut report = WorkerReport {
        ops: 0,
        units: 0,
        micros: Vec::new(),
        errors: ErrorTally::default(),
    };
    while Instant::now() < end {
        let began = Instant::now();
        let outcome = worker.step(end).await;
        let finished = Instant::now();
        match outcome {
            Ok(Outcome::Done { units }) if finished >= window_start && finished <= end => {
                report.ops += 1;
                report.units += units;
                report.micros.push((finished - began).as_micros() as u64);
            }
            Ok(_) => {}
            Err(e) => report.errors.add(&e),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let l = Latencies::from_unsorted((1..=100).rev().collect());
        assert_eq!(l.quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_micros(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_micros(100)));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }
}
