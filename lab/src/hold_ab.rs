//! `lab hold-ab` (scripts/bench/lab-ab.sh): two settings of `lab hold` side by side. Runs
//! alternate A B A B ... on the same machine in one command, because this machine's figures drift
//! over an evening by more than most changes move them; the table gives each setting's median of
//! what the million's goals measure (ramp, the phone side's cores and CPU per phone byte, flush
//! lag, drain) and B's ratio to A. Every run must be ok (held and verified exact), or the command
//! fails at that run.
//!
//! Each run is `lab hold` as a child process of its own (the same binary): a run moves the lab
//! into a network namespace of its own ([`crate::netns`]), which only a new process starts from
//! outside of. So a setting is `lab hold`'s arguments, parsed before any run starts (a typo
//! fails at once, not after an hour of A), plus environment variables for the processes of that
//! setting's runs (all of them inherit the lab's environment).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

use crate::cli::{Cli, Command};
use crate::hold::load_average;
use crate::report::Tier;
use crate::revision;

/// Most runs of each setting.
const MAX_RUNS: u32 = 100;

#[derive(Debug, clap::Args)]
pub struct HoldAbArgs {
    /// Runs of each setting (they alternate: A1 B1 A2 B2 ...).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: u32,

    /// Setting A: `lab hold`'s arguments as one string (e.g. "--phones 200000 --hold-s 60").
    /// `--out` and `--json` are the command's own.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub a: String,

    /// Setting B: the same for B.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub b: String,

    /// An environment variable for A's runs (KEY=VALUE; repeatable), e.g. RUST_LOG or a glibc
    /// tunable: every process of the run inherits it.
    #[arg(long = "a-env", value_name = "KEY=VALUE")]
    pub a_env: Vec<String>,

    /// The same for B's runs.
    #[arg(long = "b-env", value_name = "KEY=VALUE")]
    pub b_env: Vec<String>,

    /// Run A on the binaries of this git revision (`lab build-rev` builds and keeps them; its
    /// `--bin-dir` is added to A's arguments): a change against the commit before it, say.
    #[arg(long = "a-rev", value_name = "REV")]
    pub a_rev: Option<String>,

    /// The same for B.
    #[arg(long = "b-rev", value_name = "REV")]
    pub b_rev: Option<String>,

    /// Where the runs' folders go ({a,b}N, each with lab hold's report as text, JSON and HTML).
    /// Default: lab-runs/ab-UNIXTIME.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// One setting: its name, `lab hold`'s arguments, its environment, and the revision whose
/// binaries it runs (this checkout's when `None`).
#[derive(Debug, Clone, PartialEq)]
struct Setting {
    name: char,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rev: Option<String>,
}

impl Setting {
    /// Checks `args` as `lab hold` would take them, and splits `env`'s KEY=VALUE pairs.
    fn parse(name: char, args: &str, env: &[String], rev: Option<&str>) -> anyhow::Result<Setting> {
        let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        let flag = |a: &String| a.split('=').next().unwrap_or("").to_owned();
        if let Some(own) = args.iter().find(|a| ["--out", "--json"].contains(&flag(a).as_str())) {
            bail!("setting {name}: {own} is lab hold-ab's own (each run gets its folder)");
        }
        if rev.is_some() && args.iter().any(|a| flag(a) == "--bin-dir") {
            bail!("setting {name}: --{name}-rev and --bin-dir both say which binaries to run");
        }
        let words = ["lab", "hold"].into_iter().map(str::to_owned).chain(args.iter().cloned());
        match Cli::try_parse_from(words) {
            Ok(Cli { command: Command::Hold(_) }) => {}
            Ok(_) => bail!("setting {name}: not lab hold's arguments"),
            Err(e) => bail!("setting {name}: lab hold would refuse \"{}\": {e}", args.join(" ")),
        }
        let env = env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => bail!("setting {name}: {kv:?} is not KEY=VALUE"),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Setting { name, args, env, rev: rev.map(str::to_owned) })
    }

    /// Builds the setting's revision, if it has one, and points its runs at those binaries.
    async fn build(&mut self) -> anyhow::Result<()> {
        let Some(rev) = &self.rev else { return Ok(()) };
        let packages: Vec<String> = revision::SYSTEM_PACKAGES.iter().map(|p| p.to_string()).collect();
        let seed = Some(revision::default_release_dir()).filter(|d| d.is_dir());
        let dir =
            revision::build(Path::new("."), rev, &packages, &revision::default_cache(), seed.as_deref())
                .await
                .with_context(|| format!("setting {}: the binaries of {rev}", self.name))?;
        self.args.extend(["--bin-dir".to_owned(), dir.display().to_string()]);
        Ok(())
    }

    fn describe(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let rev = self.rev.as_ref().map(|r| format!(" (the binaries of {r})")).unwrap_or_default();
        format!("{}lab hold {}{rev}", env.concat(), self.args.join(" "))
    }
}

/// What the table compares, read from a run's report.json (the rest of it is ignored).
#[derive(Debug, Clone, Deserialize)]
struct Figures {
    ok: bool,
    all_connected_after_s: Option<f64>,
    gateways_and_mobile_sim_cores: f64,
    tiers: Vec<TierFigures>,
    hold_seconds: f64,
    durable_bytes_during_hold: Option<f64>,
    flush_lag_p99_at_most_s: Option<f64>,
    mobile_sim: Option<SimFigures>,
}

#[derive(Debug, Clone, Deserialize)]
struct TierFigures {
    tier: Tier,
    us_per_phone_byte: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
struct SimFigures {
    drain_seconds: f64,
}

impl Figures {
    fn us_per_byte(&self, tier: Tier) -> Option<f64> {
        self.tiers.iter().find(|t| t.tier == tier).and_then(|t| t.us_per_phone_byte)
    }
}

/// The table's rows: a label and how to read its figure from a run.
type Row = (&'static str, fn(&Figures) -> Option<f64>);
const ROWS: [Row; 9] = [
    ("all connected after, s", |f| f.all_connected_after_s),
    ("gateways + mobile-sim, cores", |f| Some(f.gateways_and_mobile_sim_cores)),
    ("gateways, us per phone byte", |f| f.us_per_byte(Tier::Gateways)),
    ("mobile-sim, us per phone byte", |f| f.us_per_byte(Tier::MobileSim)),
    ("aggregator, us per phone byte", |f| f.us_per_byte(Tier::Aggregator)),
    ("postgres, us per phone byte", |f| f.us_per_byte(Tier::Postgres)),
    ("durable bytes per second in the hold", |f| {
        f.durable_bytes_during_hold.map(|b| b / f.hold_seconds.max(1e-9))
    }),
    ("flush lag p99 at most, s", |f| f.flush_lag_p99_at_most_s),
    ("all durable after the stop, s", |f| f.mobile_sim.as_ref().map(|s| s.drain_seconds)),
];

/// Runs `lab hold-ab`: Ok(true) when every run was ok (the table printed), Ok(false) when one
/// was not (it printed which, and where its report is); an error when it could not run.
pub async fn run(args: HoldAbArgs) -> anyhow::Result<bool> {
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs {}: from 1 to {MAX_RUNS}", args.runs);
    }
    let mut settings = [
        Setting::parse('a', &args.a, &args.a_env, args.a_rev.as_deref())?,
        Setting::parse('b', &args.b, &args.b_env, args.b_rev.as_deref())?,
    ];
    for setting in &mut settings {
        setting.build().await?;
    }
    let lab = std::env::current_exe().context("the lab's own binary")?;
    let dir = match args.out {
        Some(d) => d,
        None => {
            let stamp =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            PathBuf::from(format!("lab-runs/ab-{stamp}"))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut figures: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for i in 1..=args.runs {
        for (s, setting) in settings.iter().enumerate() {
            let name = format!("{}{i}", setting.name);
            eprintln!("== run {name}: {} (load {})", setting.describe(), load_average());
            let out = dir.join(&name);
            match one_run(&lab, setting, &out).await? {
                Some(f) => figures[s].push(f),
                None => {
                    println!("FAILED: run {name} was not ok: {}", out.join("report.txt").display());
                    return Ok(false);
                }
            }
        }
    }
    print!("{}", table(args.runs, &figures[0], &figures[1]));
    println!("A: {}", settings[0].describe());
    println!("B: {}", settings[1].describe());
    println!("runs in {}", dir.display());
    Ok(true)
}

/// One `lab hold` of `setting` into `out`: its figures when it was ok, `None` when it ended
/// otherwise with a report; an error when it left none.
async fn one_run(lab: &Path, setting: &Setting, out: &Path) -> anyhow::Result<Option<Figures>> {
    let log = std::fs::File::create(out.with_extension("log"))
        .with_context(|| format!("creating {}", out.with_extension("log").display()))?;
    let status = tokio::process::Command::new(lab)
        .arg("hold")
        .args(&setting.args)
        .arg("--out")
        .arg(out)
        .envs(setting.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await
        .context("starting lab hold")?;
    let report = out.join("report.json");
    let figures: Figures = match std::fs::read(&report) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", report.display()))?
        }
        Err(_) if !status.success() => {
            bail!("lab hold ended ({status}) without a report: {}", out.with_extension("log").display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", report.display())),
    };
    Ok((status.success() && figures.ok).then_some(figures))
}

/// The medians of each row for A and B, and B / A.
fn table(runs: u32, a: &[Figures], b: &[Figures]) -> String {
    let med = |runs: &[Figures], read: fn(&Figures) -> Option<f64>| {
        crate::compare::median(runs.iter().filter_map(read).collect())
    };
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let mut s = format!("{:<40} {:>12} {:>12} {:>8}\n", format!("median of {runs} runs"), "A", "B", "B / A");
    for (label, read) in ROWS {
        let (ma, mb) = (med(a, read), med(b, read));
        let ratio = match (ma, mb) {
            (Some(x), Some(y)) if x > 0.0 => format!("{:.3}", y / x),
            _ => "-".to_owned(),
        };
        s.push_str(&format!("{label:<40} {:>12} {:>12} {ratio:>8}\n", cell(ma), cell(mb)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_any_run() {
        // (The database's URL comes from DATABASE_URL in a real run; a test cannot rely on it.)
        let s = Setting::parse('a', "--database-url postgres://x --phones 200000", &["K=v=w".into()], None)
            .unwrap();
        assert_eq!(s.args, ["--database-url", "postgres://x", "--phones", "200000"]);
        assert_eq!(s.env, [("K".to_owned(), "v=w".to_owned())]);
        assert_eq!(s.describe(), "K=v=w lab hold --database-url postgres://x --phones 200000");
        for bad in ["--phones many", "--no-such-flag", "--phones 10 --out /tmp/x", "--json"] {
            let bad = format!("--database-url postgres://x {bad}");
            assert!(Setting::parse('b', &bad, &[], None).is_err(), "{bad} was taken");
        }
        assert!(Setting::parse('b', "--database-url postgres://x", &["NOEQUALS".into()], None).is_err());
        assert!(Setting::parse('b', "--database-url postgres://x", &["=v".into()], None).is_err());
        // A revision names the binaries; so does --bin-dir: not both.
        let old = Setting::parse('a', "--database-url postgres://x", &[], Some("HEAD~1")).unwrap();
        assert_eq!(old.describe(), "lab hold --database-url postgres://x (the binaries of HEAD~1)");
        let both = Setting::parse('b', "--database-url postgres://x --bin-dir /tmp/b", &[], Some("HEAD"));
        assert!(both.unwrap_err().to_string().contains("--b-rev and --bin-dir"));
    }

    fn figures(cores: f64, gateway_us: f64, ok: bool) -> Figures {
        let json = format!(
            r#"{{"ok": {ok}, "all_connected_after_s": 21.1, "gateways_and_mobile_sim_cores": {cores},
                "tiers": [{{"tier": "gateways", "us_per_phone_byte": {gateway_us}}},
                          {{"tier": "mobile_sim", "us_per_phone_byte": null}}],
                "hold_seconds": 60.0, "durable_bytes_during_hold": 180000.0,
                "flush_lag_p99_at_most_s": 0.5, "mobile_sim": {{"drain_seconds": 0.8}},
                "phones": 200000, "anything": "else"}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn a_report_is_read_by_name_and_the_table_gives_medians_and_ratios() {
        let f = figures(0.12, 21.0, true);
        assert!(f.ok);
        assert_eq!(f.us_per_byte(Tier::Gateways), Some(21.0));
        assert_eq!(f.us_per_byte(Tier::MobileSim), None);
        let a = [figures(0.10, 20.0, true), figures(0.30, 22.0, true), figures(0.12, 21.0, true)];
        let b = [figures(0.06, 10.0, true), figures(0.05, 11.0, true), figures(0.07, 12.0, true)];
        let t = table(3, &a, &b);
        let line = |label: &str| t.lines().find(|l| l.starts_with(label)).unwrap().to_owned();
        assert!(line("gateways + mobile-sim, cores").ends_with("0.1200       0.0600    0.500"), "{t}");
        assert!(line("gateways, us per phone byte").ends_with("21.0000      11.0000    0.524"), "{t}");
        assert!(line("mobile-sim, us per phone byte").ends_with("-            -        -"), "{t}");
        assert!(line("durable bytes per second in the hold").contains("3000.0000"), "{t}");
    }
}
