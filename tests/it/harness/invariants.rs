//! The invariants every test leaves behind, checked when a [`TestServer`] is dropped: a test
//! that breaks them fails even if its own assertions passed.

use std::{process::Command, time::Duration};

use super::TestServer;

impl TestServer {
    /// The invariants every test leaves behind, checked with the server stopped: `atelier
    /// fsck` finds I1–I3 intact, and no staging file remains after a restart's recovery (I7;
    /// with I4 this means no failed write left a file behind). A cleanly stopped server may
    /// leave a `.pending` file (a commit whose outcome it could not learn, docs/storage.md):
    /// fsck reports it as `STAGING` until the next start settles it, so then recovery runs
    /// once (a start and a clean stop) and everything is checked again.
    pub fn check_invariants(&mut self) -> Result<(), String> {
        self.stop_within(Duration::from_secs(20));
        // Directly on the database (a test may have routed the server through a proxy) and
        // without fault injection.
        let direct = |s: &TestServer, cmd: &mut Command| {
            cmd.env_remove("FAILPOINTS");
            if let Some(pg) = &s.pg {
                cmd.env("DATABASE_URL", &pg.url);
            }
        };
        // (exit ok, violation lines, everything it printed)
        let fsck = |s: &TestServer| {
            let mut cmd = s.command();
            direct(s, &mut cmd);
            let out = cmd.arg("fsck").output().expect("run atelier fsck");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<String> = stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
            let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            (out.status.success(), lines, all)
        };
        let (ok, lines, out) = fsck(self);
        if ok && self.staging_files().is_empty() {
            return Ok(());
        }
        let broken: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with("STAGING "))
            .collect();
        if !broken.is_empty() || (!ok && lines.is_empty()) {
            return Err(format!(
                "after the test, `atelier fsck` finds broken invariants:\n{out}"
            ));
        }
        // Only staged files are left: what the next start's recovery must settle.
        let (saved_env, saved_child) = (self.extra_env.clone(), self.child.take());
        self.remove_env("FAILPOINTS");
        if let Some(pg) = &self.pg {
            let url = pg.url.clone();
            self.set_env("DATABASE_URL", &url);
        }
        self.spawn();
        self.stop_within(Duration::from_secs(20));
        (self.extra_env, self.child) = (saved_env, saved_child);
        let (ok, _, after) = fsck(self);
        let left = self.staging_files();
        if !ok || !left.is_empty() {
            return Err(format!(
                "after the test and a restart's recovery, fsck says:\n{after}\nstaging files left: {left:?}\n(before the recovery fsck said:\n{out})"
            ));
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that already failed is not checked (a panic inside a panic aborts).
        if !self.check_on_drop || std::thread::panicking() {
            self.kill();
            return;
        }
        if let Err(report) = self.check_invariants() {
            panic!(
                "{report}\n(a test that breaks the data on purpose calls `skip_invariant_check()`)"
            );
        }
    }
}
