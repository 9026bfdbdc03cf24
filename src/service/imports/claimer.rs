//! Who holds a claim: `host:pid:uuid`, so that an import on the same host can tell its
//! claimer died (kill -9) without waiting for the lease.

use std::sync::OnceLock;

/// A new claimer identity: `host:pid:uuid`. The host and pid let another import on the same
/// host see that the claimer died (kill -9) and take its claims at once, without waiting for
/// the lease to pass.
pub fn new_claimer() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(super) fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().replace(':', "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_owned())
    })
}

/// Whether `claimer` names a process of this host that no longer runs (or is a zombie).
/// Conservative: anything unknown is treated as alive, and then only the lease frees it.
pub(super) fn claimer_is_dead(claimer: &str) -> bool {
    let mut parts = claimer.splitn(3, ':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != hostname() || pid == std::process::id() || !cfg!(target_os = "linux") {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        // `pid (comm) S …`: the state follows the last parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}
