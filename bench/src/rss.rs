//! Resident memory of the server process, read from `/proc/<pid>/status` (`VmRSS`), once or
//! sampled in the background every few milliseconds to catch the peak of a phase.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::error::{Context, Result};

/// How often the sampler looks: short enough to see the peak of a 200 MiB upload.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The current resident set size of `pid`, in bytes.
pub fn current(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format_args!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).context(format_args!("no VmRSS line for pid {pid}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples a process's RSS in the background and keeps the peak.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid` now.
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(current(pid).unwrap_or(0)));
        let task = tokio::spawn({
            let peak = Arc::clone(&peak);
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    // The process may have exited; the peak so far stands.
                    let Ok(rss) = current(pid) else { break };
                    peak.fetch_max(rss, Relaxed);
                }
            }
        });
        RssSampler { peak, task }
    }

    /// Stops sampling and returns the peak RSS seen, in bytes.
    pub fn finish(self) -> u64 {
        self.task.abort();
        self.peak.load(Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_vm_rss;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tatelier\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
