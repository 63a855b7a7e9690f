//! `lab bench fold` (scripts/bench/fold.sh): bounded growth of the sessions table (folding,
//! docs/ARCHITECTURE.md). `--runs` runs, one after the other, into one aggregator on one fresh
//! PostgreSQL database ([`crate::bench::solo`]). Each run: mobile-sim connects the sessions, every one
//! sends a byte every 1 to 3 s for `--duration`, then closes; mobile-sim verifies the run (its
//! strict verdict: nothing lost, nothing counted twice, every byte confirmed).
//!
//! Modes: `gateways` (virtual gateways of 1,000 sessions each, the sessions rounded up to whole
//! gateways, the same gateway names in every run: every run is a new boot of each gateway, which
//! supersedes the previous run's boot) or `direct` (phones straight to the aggregator). After
//! each run it prints the rows of `sessions` and `device_folded`, the folded boots and the
//! reports waiting in the journal; after the last run it waits for the journal to be merged and
//! for folding to reach the bound (at most one run's sessions with gateways: the last run's boots
//! stay current; none direct), then checks every device of every run again against what that
//! run sent and had confirmed (mobile-sim's per-device CSVs, compared in SQL with
//! `device_totals`), so devices whose sessions were folded are verified too. A failed verdict,
//! a table over the bound or a wrong device total prints why, and the command exits 1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cli_env::Interrupts;

use crate::bench::solo::{self, scalar, FreshStore, Solo};
use crate::bench::{files_for, leave, sim_duration, work_dir};
use crate::children::Proc;
use crate::cluster::load::{direct_phones, virtual_gateways, LoadSpec};
use crate::hold::{binary, load_average};

/// Sessions per virtual gateway.
const SESSIONS_PER_GATEWAY: u32 = 1000;
/// Trunk links per virtual gateway (mobile-sim's default).
const LINKS: u64 = 2;
/// Trunks and phones the aggregator admits beyond the load's.
const TRUNKS_SPARE: u64 = 100;
const PHONES_SPARE: u64 = 100;
/// Open files a process needs beyond its connections (listeners, logs, the store).
const FILES_SPARE: u64 = 512;
/// The folding pass's period, ms (`--fold-interval-ms`).
const FOLD_INTERVAL_MS: &str = "1000";
/// A session's pause between bytes, seconds.
const MIN_INTERVAL_S: u64 = 1;
const MAX_INTERVAL_S: u64 = 3;
/// Direct phones connected per second.
const PHONES_RATE: &str = "2000";
/// After a run's sends, how long mobile-sim waits for every byte to be confirmed durable.
const DRAIN_TIMEOUT: &str = "60s";
/// The longest mobile-sim may outlive its duration: the drain, the closes, the verification.
const SIM_MARGIN: Duration = Duration::from_secs(900);
/// After the last run, the longest the journal may take to be merged.
const MERGE_LIMIT: Duration = Duration::from_secs(1800);
/// Once it is merged, folding gets `--fold-after-s` and this long, then up to [`FOLD_POLLS`]
/// looks [`FOLD_POLL`] apart (2 minutes), to reach the bound.
const FOLD_SETTLE: Duration = Duration::from_secs(3);
const FOLD_POLLS: u32 = 60;
const FOLD_POLL: Duration = Duration::from_secs(2);
/// The longest `--fold-after-s` the bench waits out.
const MAX_FOLD_AFTER_S: u64 = 3600;
/// Most runs (each a boot of every gateway: the aggregator is told to allow one more per hour).
const MAX_RUNS: u32 = 1000;
/// The gateways' names: this and a number of four digits or more.
const GATEWAY_PREFIX: &str = "fold-gw-";

/// Where the sessions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Virtual gateways of 1,000 sessions each, the same names every run.
    Gateways,
    /// Phones straight to the aggregator.
    Direct,
}

#[derive(Debug, clap::Args)]
pub struct FoldArgs {
    /// Virtual gateways, or phones straight to the aggregator.
    #[arg(long, value_enum)]
    pub mode: Mode,

    /// Runs, one after the other, into the same aggregator and database (1 to 1000; the
    /// issue's load: 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    pub runs: u32,

    /// Sessions per run (with gateways, rounded up to whole gateways of 1,000; the load:
    /// 100000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,

    /// How long each run's sessions send (6s, 20s; 2 s to 24 h).
    #[arg(long, value_parser = crate::bench::parse_duration)]
    pub duration: Duration,

    /// The aggregator's `--fold-after-s`: how long a finished session stays unfolded (at most
    /// an hour: the bench waits that long for folding after the last run).
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_FOLD_AFTER_S))]
    pub fold_after_s: u64,

    /// The PostgreSQL server (a role that may CREATE DATABASE): the bench gets a fresh database,
    /// dropped at its end.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: String,

    /// Where the aggregator and mobile-sim are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl FoldArgs {
    /// Virtual gateways per run (none direct).
    fn gateways(&self) -> u32 {
        match self.mode {
            Mode::Gateways => self.sessions.div_ceil(SESSIONS_PER_GATEWAY),
            Mode::Direct => 0,
        }
    }

    /// The devices one run plays.
    fn devices(&self) -> u64 {
        match self.mode {
            Mode::Gateways => u64::from(self.gateways()) * u64::from(SESSIONS_PER_GATEWAY),
            Mode::Direct => u64::from(self.sessions),
        }
    }

    /// The most rows `sessions` may hold once folding is done: the last run's gateway boots stay
    /// current (nothing supersedes them yet), direct phones' sessions all fold.
    fn bound(&self) -> u64 {
        match self.mode {
            Mode::Gateways => self.devices(),
            Mode::Direct => 0,
        }
    }
}

/// What the end's check in SQL found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recheck {
    devices: i64,
    folded: i64,
    missing: i64,
    lost: i64,
    doubled: i64,
}

impl Recheck {
    /// Why the devices of `runs` runs of `per_run` devices are not all right; `None` when they are.
    fn problem(&self, runs: u32, per_run: u64) -> Option<String> {
        let expected = u64::from(runs) * per_run;
        if u64::try_from(self.devices).ok() != Some(expected) {
            return Some(format!("expected {expected} devices in the runs' reports, found {}", self.devices));
        }
        (self.missing != 0 || self.lost != 0 || self.doubled != 0)
            .then(|| "a device's total is wrong after folding".to_owned())
    }
}

/// Runs `lab bench fold`: Ok(true) when every run verified, the table stayed within its bound
/// and every device was right at the end; Ok(false) when not (it printed why); an error when it
/// could not run.
pub async fn run(args: FoldArgs) -> anyhow::Result<bool> {
    if args.database_url.starts_with("sqlite:") {
        bail!("lab bench fold checks the store in SQL on PostgreSQL: give a postgres:// --database-url");
    }
    // mobile-sim holds a file per link or phone, and so does the aggregator.
    let connections = match args.mode {
        Mode::Gateways => u64::from(args.gateways()) * LINKS,
        Mode::Direct => u64::from(args.sessions),
    };
    files_for(connections + FILES_SPARE, &format!("{connections} connections"))?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let (aggregator, sim) = (binary(&bin, "aggregator")?, binary(&bin, "mobile-sim")?);
    let work = work_dir("fold")?;
    let mut signals = Interrupts::catch()?;
    let store = FreshStore::create(&args.database_url, "holdfast_fold", &work, "fold").await?;
    let result = tokio::select! {
        r = measure(&args, &aggregator, &sim, &work, &store) => r,
        signal = signals.recv() => Err(anyhow!("{signal}: the bench was stopped")),
    };
    if let Err(e) = store.remove().await {
        eprintln!("lab bench fold: {e:#}");
    }
    leave(&work, &result);
    result
}

async fn measure(
    args: &FoldArgs,
    bin: &Path,
    sim: &Path,
    work: &Path,
    store: &FreshStore,
) -> anyhow::Result<bool> {
    let gateways = args.gateways();
    let bounds: Vec<String> = [
        "--max-trunks",
        &(u64::from(gateways) * LINKS + TRUNKS_SPARE).to_string(),
        "--max-phones",
        &(u64::from(args.sessions) + PHONES_SPARE).to_string(),
        "--fold-after-s",
        &args.fold_after_s.to_string(),
        "--fold-interval-ms",
        FOLD_INTERVAL_MS,
        // Each run is a new boot of every gateway: more of them than the default 6 per hour
        // allows (docs/SECURITY.md M4).
        "--max-gateway-boots-per-hour",
        &(args.runs + 1).to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut agg = Solo::start(bin, &work.join("aggregator"), &store.url, &bounds, work, "aggregator").await?;
    let gateways_file = match args.mode {
        Mode::Gateways => {
            let names: Vec<String> = (0..gateways).map(|g| format!("{GATEWAY_PREFIX}{g:04}")).collect();
            Some(agg.provision(&names).await?)
        }
        Mode::Direct => None,
    };
    let mut db = store.connect().await?;
    println!(
        "fold: {}, {} runs of {} sessions (a byte every {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s for {:?}, then closed), \
         fold after {} s; load {}",
        crate::cluster::spelled(args.mode),
        args.runs,
        args.devices(),
        args.duration,
        args.fold_after_s,
        load_average()
    );
    for r in 1..=args.runs {
        let csv = work.join(format!("run-{r}.csv"));
        let mut spec = LoadSpec::new(&sim_duration(args.duration), &format!("f{r}-"));
        spec.extra = vec![
            "--drain-timeout".into(),
            DRAIN_TIMEOUT.into(),
            "--per-device".into(),
            csv.display().to_string(),
        ];
        let mut c = match &gateways_file {
            Some(file) => virtual_gateways(sim, &agg.trunk_target(), &agg.ca(), file, SESSIONS_PER_GATEWAY),
            None => direct_phones(
                sim,
                &agg.phone_target(),
                &agg.ca(),
                &agg.device_key(),
                args.devices(),
                PHONES_RATE,
            ),
        };
        c.args(spec.args_for(
            &format!("{MIN_INTERVAL_S}s"),
            &format!("{MAX_INTERVAL_S}s"),
            &store.url,
            &spec.prefix,
        ));
        let report = work.join(format!("sim-{r}.json"));
        let mut p = Proc::spawn(&format!("sim-{r}"), c, 0, work, Some(&report))?;
        if let Err(why) = solo::verdict(&mut p, args.duration + SIM_MARGIN, &report).await? {
            println!("FAILED: run {r}: mobile-sim's verdict failed: {why}");
            return Ok(false);
        }
        agg.check_alive()?;
        println!(
            "  run {r:>2} verified  sessions rows {:>8}  device_folded rows {:>8}  folded boots {:>4}  \
             journal reports waiting {:>9}  ({})",
            scalar(&mut db, "SELECT count(*) FROM sessions").await?,
            scalar(&mut db, "SELECT count(*) FROM device_folded").await?,
            scalar(&mut db, "SELECT count(*) FROM folded_epochs").await?,
            scalar(&mut db, "SELECT coalesce(sum(entries), 0)::bigint FROM journal").await?,
            load_average()
        );
    }

    // Reports still in the journal are sessions the table has not seen yet, and a boot is folded
    // only once none of its reports waits there: so the table is judged once the journal is
    // merged (a table that looks small while the journal holds the rest would pass by
    // accident), and folding then has --fold-after-s and a little more to reach the bound.
    let from = Instant::now();
    let Some(merged_after) = solo::wait_journal_merged(&mut db, MERGE_LIMIT).await? else {
        println!("FAILED: reports still in the journal {MERGE_LIMIT:?} after the last run");
        return Ok(false);
    };
    tokio::time::sleep(Duration::from_secs(args.fold_after_s) + FOLD_SETTLE).await;
    let bound = args.bound();
    let mut rows = 0;
    for _ in 0..FOLD_POLLS {
        rows = scalar(&mut db, "SELECT count(*) FROM sessions").await?;
        if u64::try_from(rows).is_ok_and(|n| n <= bound) {
            break;
        }
        tokio::time::sleep(FOLD_POLL).await;
    }
    let folded_rows = scalar(&mut db, "SELECT count(*) FROM device_folded").await?;
    println!(
        "after the last run: journal merged in {} s; {} s after the last run: sessions rows {rows}, device_folded rows {folded_rows}",
        merged_after.as_secs(),
        from.elapsed().as_secs()
    );
    if !u64::try_from(rows).is_ok_and(|n| n <= bound) {
        println!(
            "FAILED: the sessions table holds {rows} rows after {} runs: more than {bound} (folding not working)",
            args.runs
        );
        return Ok(false);
    }

    let found = recheck(&mut db, work, args.runs).await?;
    println!(
        "verified again at the end: {} devices of {} runs ({} of them with folded sessions): {} missing, {} lost, {} double-counted",
        found.devices, args.runs, found.folded, found.missing, found.lost, found.doubled
    );
    if let Some(problem) = found.problem(args.runs, args.devices()) {
        println!("FAILED: {problem}");
        return Ok(false);
    }
    agg.stop().await;
    println!("load at the end: {}", load_average());
    Ok(true)
}

/// Every device of every run, against `device_totals` (live rows plus folded totals): the runs'
/// per-device CSVs (`device,sent,durable`) copied into a table of this connection's own.
async fn recheck(db: &mut sqlx::PgConnection, work: &Path, runs: u32) -> anyhow::Result<Recheck> {
    sqlx::raw_sql("CREATE TEMP TABLE bench_sent (device text PRIMARY KEY, sent bigint NOT NULL, durable bigint NOT NULL)")
        .execute(&mut *db)
        .await
        .context("creating the table of what was sent")?;
    for r in 1..=runs {
        let csv = work.join(format!("run-{r}.csv"));
        let text = std::fs::read(&csv).with_context(|| format!("reading {}", csv.display()))?;
        let mut copy = db
            .copy_in_raw("COPY bench_sent FROM STDIN WITH (FORMAT csv, HEADER true)")
            .await
            .context("copying what was sent")?;
        copy.send(text).await?;
        copy.finish().await.with_context(|| format!("copying {}", csv.display()))?;
    }
    let (devices, missing, lost, doubled): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE t.device IS NULL),
                count(*) FILTER (WHERE COALESCE(t.bytes, 0) < s.durable), count(*) FILTER (WHERE t.bytes > s.sent)
           FROM bench_sent s LEFT JOIN device_totals t USING (device)",
    )
    .fetch_one(&mut *db)
    .await
    .context("comparing every device with device_totals")?;
    let folded = scalar(db, "SELECT count(*) FROM bench_sent s JOIN device_folded f USING (device)").await?;
    Ok(Recheck { devices, folded, missing, lost, doubled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode, sessions: u32) -> FoldArgs {
        FoldArgs {
            mode,
            runs: 3,
            sessions,
            duration: Duration::from_secs(6),
            fold_after_s: 2,
            database_url: "postgres://x".into(),
            bin_dir: None,
        }
    }

    #[test]
    fn gateways_devices_and_bounds() {
        let g = args(Mode::Gateways, 5000);
        assert_eq!((g.gateways(), g.devices(), g.bound()), (5, 5000, 5000));
        // Rounded up to whole gateways: what mobile-sim plays.
        let odd = args(Mode::Gateways, 2500);
        assert_eq!((odd.gateways(), odd.devices(), odd.bound()), (3, 3000, 3000));
        let d = args(Mode::Direct, 2000);
        assert_eq!((d.gateways(), d.devices(), d.bound()), (0, 2000, 0));
    }

    #[test]
    fn the_recheck_fails_on_any_wrong_device() {
        let fine = Recheck { devices: 6000, folded: 4000, missing: 0, lost: 0, doubled: 0 };
        assert_eq!(fine.problem(3, 2000), None);
        assert!(fine.problem(3, 3000).is_some(), "a device short");
        for bad in
            [Recheck { missing: 1, ..fine }, Recheck { lost: 1, ..fine }, Recheck { doubled: 1, ..fine }]
        {
            assert_eq!(bad.problem(3, 2000).as_deref(), Some("a device's total is wrong after folding"));
        }
    }
}
