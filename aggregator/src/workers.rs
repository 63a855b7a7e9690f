//! `--workers N`: N processes of this binary share the listening port (SO_REUSEPORT), each with
//! its own ledger and open-file budget. The parent only supervises: it forwards SIGTERM and exits
//! when they have all exited.

use std::process::Stdio;

use anyhow::Context;
use tracing::{info, warn};

/// Runs `count` worker processes with the same arguments plus `--worker-index I`, and the
/// environment variables `env` set.
pub async fn supervise(count: usize, env: &[(&str, String)]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::with_capacity(count);
    for i in 0..count {
        let child = tokio::process::Command::new(&exe)
            .args(&args)
            .arg("--worker-index")
            .arg(i.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start worker {i}"))?;
        children.push(child);
    }
    info!(workers = count, "workers started");
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let terminate = || {
        for pid in &pids {
            // SIGTERM: each worker shuts down gracefully on its own.
            // SAFETY: kill(2) with a child's pid and a signal number; no memory is shared.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
        }
    };
    let mut failed = false;
    tokio::select! {
        _ = crate::shutdown::signal() => terminate(),
        (status, i, _) = futures_util::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait()))) => {
            warn!(worker = i, ?status, "a worker exited; stopping the others");
            failed = true;
            terminate();
        }
    }
    for mut child in children {
        let status = child.wait().await?;
        failed |= !status.success();
    }
    anyhow::ensure!(!failed, "a worker failed");
    Ok(())
}
