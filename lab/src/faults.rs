//! `lab faults` (scripts/fault-checks.sh): the checks of the checks. The end-to-end run,
//! README's run command, the drills, the million's command and the fold bench must FAIL when the
//! system does not do its job. Each is run against a database broken on purpose
//! (`HOLDFAST_FAULT=NAME`: scripts/faults/NAME.sql, which the lab runs after the migrations) and
//! must exit non-zero with the reason named in its output:
//!
//! | check | command | fault | must say |
//! |---|---|---|---|
//! | e2e | scripts/e2e.sh, small | drop-writes (commits succeed, nothing is persisted) | none-lost |
//! | run | scripts/run.sh --once on PostgreSQL | drop-writes, through nginx and host gateways | none-lost |
//! | drill-drop-writes | scripts/drills.sh trunk-cut | drop-writes, in a drill | none-lost |
//! | drill-fail-reads | scripts/drills.sh aggregator-kill | fail-reads: the totals cannot be read | the verification could not be carried out |
//! | hold | lab hold, 2,000 phones | drop-writes, the million's command | none-lost |
//! | fold-loses | scripts/bench/fold.sh, small | folding deletes sessions and adds nothing | wrong after folding |
//! | fold-keeps | scripts/bench/fold.sh, small | folding deletes nothing: the table grows | folding not working |
//!
//! The last two reach fold.sh's checks after its runs (every device again, the table's bound):
//! each run alone verifies exact under those faults, since a run is verified before it is folded.
//!
//! A check that passes here is a defect: a verification that cannot tell "nothing arrived" from
//! "all arrived". A check that fails for another reason (a port in use, a crash) is a failure
//! too, named as such: the fault was not what stopped it. About 6 minutes on 2 cores (fold-keeps
//! waits 2 minutes for a bound that never comes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

/// Lines of a check's output shown when it went wrong.
const TAIL_LINES: usize = 30;

#[derive(Debug, clap::Args)]
pub struct FaultsArgs {
    /// Run only these checks (by name; repeatable). Default: all.
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,

    /// List the checks and exit.
    #[arg(long)]
    pub list: bool,
}

/// One check: a command, the fault it runs under, and what its output must say.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub fault: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// It names the fault when a line of its output holds every piece of one of these, in
    /// order (any one of them will do).
    pub expect: Vec<Vec<String>>,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It failed, and said why: the line that did.
    Pass { code: i32, line: String },
    /// It exited 0 with the fault injected: its check cannot fail.
    CannotFail,
    /// It failed without naming the fault: it failed for another reason.
    OtherReason { code: i32 },
}

impl Check {
    fn new(name: &str, fault: &str, command: &[&str], expect: &[&[&str]]) -> Self {
        Self {
            name: name.to_owned(),
            fault: fault.to_owned(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            expect: expect.iter().map(|alt| alt.iter().map(|s| s.to_string()).collect()).collect(),
        }
    }

    fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    fn describe(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        format!("HOLDFAST_FAULT={} {}{}", self.fault, env.concat(), self.command.join(" "))
    }

    /// The line of `output` that names the fault, if one does.
    fn named_in<'o>(&self, output: &'o str) -> Option<&'o str> {
        output.lines().find(|line| self.expect.iter().any(|pieces| in_order(line, pieces)))
    }
}

/// Whether `line` holds each of `pieces`, one after another.
fn in_order(line: &str, pieces: &[String]) -> bool {
    let mut rest = line;
    pieces.iter().all(|p| match rest.find(p.as_str()) {
        Some(at) => {
            rest = &rest[at + p.len()..];
            true
        }
        None => false,
    })
}

/// The checks, with `lab` (this binary) for the million's command and `work` for their files.
pub fn checks(lab: &Path, work: &Path, listen_port: u16) -> Vec<Check> {
    let none_lost: &[&[&str]] = &[&["none-lost"]];
    vec![
        Check::new("e2e", "drop-writes", &["bash", "scripts/e2e.sh"], none_lost)
            .env("E2E_PHONES", "400")
            .env("E2E_GATEWAYS", "4")
            .env("E2E_SESSIONS", "100")
            .env("E2E_DURATION", "5s"),
        Check::new(
            "run",
            "drop-writes",
            &["bash", "scripts/run.sh", "--once", "--store", "postgres", "--gateways", "1", "--phones", "50"],
            none_lost,
        )
        .env("HOLDFAST_DATA_DIR", work.join("run").display().to_string())
        .env("HOLDFAST_LISTEN", format!("127.0.0.1:{listen_port}"))
        .env("DEMO_DURATION", "5s"),
        Check::new(
            "drill-drop-writes",
            "drop-writes",
            &["bash", "scripts/drills.sh", "trunk-cut"],
            none_lost,
        ),
        Check::new(
            "drill-fail-reads",
            "fail-reads",
            &["bash", "scripts/drills.sh", "aggregator-kill"],
            &[&["device_totals", "does not exist"], &["verification could not be carried out"]],
        ),
        Check::new(
            "hold",
            "drop-writes",
            &[
                &lab.display().to_string(),
                "hold",
                "--phones",
                "2000",
                "--hold-s",
                "5",
                "--out",
                &work.join("hold").display().to_string(),
            ],
            none_lost,
        ),
        Check::new(
            "fold-loses",
            "fold-loses",
            &["bash", "scripts/bench/fold.sh", "gateways", "2", "1000", "6s", "2"],
            &[&["wrong after folding"]],
        ),
        Check::new(
            "fold-keeps",
            "fold-keeps",
            &["bash", "scripts/bench/fold.sh", "direct", "1", "500", "6s", "2"],
            &[&["folding not working"]],
        ),
    ]
}

/// Runs `check` with its fault in `repo` (the checkout whose scripts it runs), its output into
/// `log`; says how it ended.
pub async fn run_check(check: &Check, repo: &Path, log: &Path) -> anyhow::Result<Verdict> {
    let (program, args) = check.command.split_first().context("a check without a command")?;
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = Command::new(program)
        .current_dir(repo)
        .args(args)
        .envs(check.env.iter().map(|(k, v)| (k, v)))
        .env("HOLDFAST_FAULT", &check.fault)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .await
        .with_context(|| format!("starting {program}"))?;
    // A process killed by a signal has no code: it failed all the same.
    let code = status.code().unwrap_or(-1);
    if status.success() {
        return Ok(Verdict::CannotFail);
    }
    let output = String::from_utf8_lossy(&std::fs::read(log)?).into_owned();
    Ok(match check.named_in(&output) {
        Some(line) => Verdict::Pass { code, line: line.trim().to_owned() },
        None => Verdict::OtherReason { code },
    })
}

/// Runs `lab faults`: `true` when every check failed as it must.
pub async fn run(args: FaultsArgs) -> anyhow::Result<bool> {
    let lab = std::env::current_exe().context("the lab's own binary")?;
    let work = work_dir()?;
    let port = free_port()?;
    let all = checks(&lab, &work.0, port);
    if args.list {
        for c in &all {
            println!("{:<18} {}", c.name, c.describe());
        }
        return Ok(true);
    }
    if let Some(unknown) = args.only.iter().find(|n| !all.iter().any(|c| &c.name == *n)) {
        anyhow::bail!("no check named {unknown:?} (lab faults --list names them)");
    }
    let repo = crate::revision::checkout_root().await?;
    let chosen: Vec<&Check> =
        all.iter().filter(|c| args.only.is_empty() || args.only.contains(&c.name)).collect();
    let (mut passed, mut failed) = (0, 0);
    for check in chosen {
        eprintln!("==> fault check {}: {}", check.name, check.describe());
        let log = work.0.join(format!("{}.log", check.name));
        let verdict = run_check(check, &repo, &log).await?;
        match &verdict {
            Verdict::Pass { code, line } => {
                println!("  PASS: {} exited {code}: {line}", check.name);
                passed += 1;
                continue;
            }
            Verdict::CannotFail => println!(
                "{}  FAIL: {} exited 0 with the fault {} injected: its check cannot fail",
                tail(&log),
                check.name,
                check.fault
            ),
            Verdict::OtherReason { code } => println!(
                "{}  FAIL: {} exited {code} but its output does not name the fault ({}): it failed for another reason",
                tail(&log),
                check.name,
                check.expect.iter().map(|alt| alt.join(" ... ")).collect::<Vec<_>>().join(" | ")
            ),
        }
        failed += 1;
    }
    println!("\nfault checks: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The last lines of a check's log, indented.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].iter().map(|l| format!("    {l}\n")).collect()
}

/// A folder for the checks' logs and data, removed when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn work_dir() -> anyhow::Result<WorkDir> {
    use std::os::unix::fs::PermissionsExt;
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("holdfast-faults.{}.{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // As root, run.sh's private PostgreSQL runs as the postgres account, which must reach it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(WorkDir(dir))
}

/// A port nothing listens on now, for README's run command (its default may be in use).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, expect: &[&[&str]]) -> Check {
        Check::new("t", "drop-writes", &["sh", "-c", script], expect)
    }

    #[tokio::test]
    async fn a_check_passes_only_when_its_command_fails_and_names_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let named = sh("echo 'FAILED: none-lost (3 of 4 devices)' >&2; exit 1", &[&["none-lost"]]);
        assert_eq!(
            run_check(&named, dir.path(), &log).await.unwrap(),
            Verdict::Pass { code: 1, line: "FAILED: none-lost (3 of 4 devices)".into() }
        );
        let passed = sh("echo 'verdict OK'", &[&["none-lost"]]);
        assert_eq!(run_check(&passed, dir.path(), &log).await.unwrap(), Verdict::CannotFail);
        let other = sh("echo 'address in use'; exit 2", &[&["none-lost"]]);
        assert_eq!(run_check(&other, dir.path(), &log).await.unwrap(), Verdict::OtherReason { code: 2 });
        // The fault is in the command's environment.
        let sees_it = sh("echo \"fault=$HOLDFAST_FAULT\"; exit 1", &[&["fault=drop-writes"]]);
        assert!(matches!(run_check(&sees_it, dir.path(), &log).await.unwrap(), Verdict::Pass { .. }));
        // It runs in the checkout it is given, wherever the lab was started.
        let inside = sh("test -f t.log && echo here; exit 1", &[&["here"]]);
        assert!(matches!(run_check(&inside, dir.path(), &log).await.unwrap(), Verdict::Pass { .. }));
    }

    #[test]
    fn a_line_names_the_fault_when_it_holds_the_pieces_in_order() {
        let c = sh("", &[&["device_totals", "does not exist"], &["could not be carried out"]]);
        assert!(c.named_in("ERROR: relation \"device_totals\" does not exist").is_some());
        assert!(c.named_in("does not exist: device_totals").is_none(), "out of order");
        assert!(c.named_in("device_totals\ndoes not exist").is_none(), "not on one line");
        assert!(c.named_in("the verification could not be carried out").is_some());
    }

    #[test]
    fn every_check_has_a_command_a_fault_and_a_reason() {
        let all = checks(Path::new("/x/lab"), Path::new("/w"), 19001);
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["e2e", "run", "drill-drop-writes", "drill-fail-reads", "hold", "fold-loses", "fold-keeps"]
        );
        for c in &all {
            assert!(!c.command.is_empty() && !c.expect.is_empty(), "{}", c.name);
            let sql = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/faults")
                .join(format!("{}.sql", c.fault));
            assert!(sql.is_file(), "no {}", sql.display());
        }
    }
}
