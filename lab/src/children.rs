//! The processes a run starts: each in its own process group (a Ctrl-C at the terminal reaches
//! only the lab, which then stops them in order), its output in a file of the run's folder, and
//! killed when dropped, so that a lab that fails leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// A process the lab started.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` at niceness `nice` (inherited by the processes it starts); stdout to
    /// `stdout` (or to the log), stderr to `dir/NAME.log` (appended: a process started again
    /// under the same name keeps its earlier lines).
    pub fn spawn(
        name: &str,
        mut command: Command,
        nice: i32,
        dir: &Path,
        stdout: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        if nice != 0 {
            // SAFETY: between fork and exec only setpriority(2) runs, an async-signal-safe
            // system call on the child itself; no allocation, no lock.
            unsafe {
                command.pre_exec(move || {
                    if libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let out = match stdout {
            Some(path) => {
                std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?
            }
            None => err.try_clone()?,
        };
        command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    /// Starts `command` with the lab's own stdout and stderr (a load whose progress people
    /// watch), in its own process group like every other.
    pub fn spawn_foreground(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Proc> {
        command.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (SIGINT, SIGTERM).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a pid of our own child, which we have not reaped yet.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits for the exit, up to `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Waits for the exit, however long it takes.
    pub async fn wait_all(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().await.ok()
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait(grace).await {
            return Some(status);
        }
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }

    /// The last `n` lines of its log, to say why it failed.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A process that must stay up (a server under test): it fails its check once it has exited,
/// with how and its log's last lines.
impl crate::wait::Alive for Proc {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            Some(status) => anyhow::bail!("{} exited ({status}): {}", self.name, self.log_tail(10)),
            None => Ok(()),
        }
    }
}

/// A process dropped while it runs is killed with everything it started: its process group.
/// (tokio's `kill_on_drop` kills the process alone: an aggregator's `--workers` or mobile-sim's
/// worker processes would outlive it, as they did when `lab e2e` failed, and hold their ports and
/// CPU until the machine restarts.) Only while the process has not been reaped: its group's ID
/// is then certainly still ours.
impl Drop for Proc {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            // SAFETY: killpg(2) on the process group of our own child (`process_group(0)` at
            // spawn), which has not been reaped.
            unsafe {
                libc::killpg(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Every `KEY=N` field in `text` (our processes' status lines: a host gateway's `live=N` and
/// `bytes=N`), in order. A field is the key at the start of a word (`trunk_bytes=` is not
/// `bytes=`), followed by digits.
pub fn log_counters(text: &str, key: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .filter_map(|value| {
            value[..value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len())].parse().ok()
        })
        .collect()
}

/// A command for one of holdfast's binaries with none of the caller's `DATABASE_URL` or
/// `HOLDFAST_*` settings: what the lab runs is what its arguments say. (CI exports
/// `DATABASE_URL`; with it, `gateway add` once wrote into a shared PostgreSQL database where
/// another run's gateway already had the name.)
pub fn clean_command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("DATABASE_URL");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HOLDFAST_") {
            c.env_remove(name);
        }
    }
    c
}

/// Runs a short command (the aggregator's admin subcommands) to its end; its stdout.
pub async fn output(mut command: Command) -> anyhow::Result<String> {
    let out = command.stdin(Stdio::null()).output().await.context("starting a command")?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed ({}): {}",
            command.as_std(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dropped process takes what it started with it (a shell's background `sleep` here, as an
    /// aggregator's workers).
    #[tokio::test]
    async fn dropping_a_process_ends_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("sleep 300 & echo $! > {}; wait", pid_file.display()));
        let p = Proc::spawn("sh", c, 0, dir.path(), None).unwrap();
        let mut child = None;
        for _ in 0..100 {
            child = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if child.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let child = child.expect("the shell wrote its child's pid");
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        };
        assert!(alive(child));
        drop(p);
        for _ in 0..100 {
            if !alive(child) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the process's own child {child} outlived it");
    }
}
