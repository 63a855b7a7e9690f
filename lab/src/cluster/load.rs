//! The cluster's load: gateways with their phones, and phones straight to the aggregators, each
//! a mobile-sim process that verifies every phone's bytes against the store at its end and
//! writes its report (JSON) to a file the caller reads as a [`SimReport`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::children::Proc;
use crate::cluster::{Cluster, GatewayKind};
use crate::report::SimReport;

/// Phones a host gateway's mobile-sim connects per second.
const GATEWAY_PHONES_RATE: &str = "500";
/// Phones straight to the aggregators connected per second (TLS handshakes at nginx).
const DIRECT_PHONES_RATE: &str = "200";

/// One load: what it is called among the cluster's processes and where its report goes.
#[derive(Debug, Clone)]
pub struct Load {
    /// The process whose exit ends the load (and which writes the report).
    pub name: String,
    pub report: PathBuf,
    /// Devices it plays.
    pub phones: u64,
}

impl Load {
    /// Its report, once the load has ended.
    pub fn read(&self) -> anyhow::Result<SimReport> {
        let text = std::fs::read_to_string(&self.report)
            .with_context(|| format!("no report in {}", self.report.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not mobile-sim's JSON report", self.report.display()))
    }
}

/// What every load runs for, and where it verifies.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// mobile-sim's --duration ("30s").
    pub duration: String,
    /// Device ids start with this.
    pub prefix: String,
    /// The report as text for people (the foreground phones of `lab cluster`), not JSON.
    pub text: bool,
    /// Progress and logs quiet (background loads).
    pub quiet: bool,
    /// More mobile-sim arguments (a drill's bounds: --max-dropped, --max-failed,
    /// --allow-unconfirmed).
    pub extra: Vec<String>,
    /// Where virtual gateways' trunks go instead of nginx (`wss://ADDRESS/trunk` of an aggregator
    /// that serves TLS itself: `lab bench trunk-throughput`); `None`: through nginx.
    pub trunk_target: Option<String>,
}

impl LoadSpec {
    pub fn new(duration: &str, prefix: &str) -> LoadSpec {
        LoadSpec {
            duration: duration.into(),
            prefix: prefix.into(),
            text: false,
            quiet: true,
            extra: Vec::new(),
            trunk_target: None,
        }
    }

    fn args(&self, cluster: &Cluster, prefix: &str) -> Vec<String> {
        let s = &cluster.settings;
        self.args_for(&s.min_interval, &s.max_interval, &cluster.db_url, prefix)
    }

    /// mobile-sim's arguments for this load: each device pauses `min_interval..max_interval`
    /// between bytes, device ids start with `prefix`, and every one is verified against the
    /// store at `database_url` at the end.
    pub fn args_for(
        &self,
        min_interval: &str,
        max_interval: &str,
        database_url: &str,
        prefix: &str,
    ) -> Vec<String> {
        let mut a: Vec<String> = [
            "--duration",
            &self.duration,
            "--min-interval",
            min_interval,
            "--max-interval",
            max_interval,
            "--device-prefix",
            prefix,
            "--verify",
            "--database-url",
            database_url,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if self.quiet {
            a.push("--quiet".into());
        }
        if !self.text {
            a.push("--json".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// mobile-sim's virtual gateways: those of `gateways_file` (`NAME HEXSECRET` lines, as `aggregator
/// gateway add` prints them), `sessions` phone sessions each, their TLS trunks to `target`
/// (`wss://HOST:PORT/trunk`) with the server's certificate pinned to `ca`. The caller adds the
/// load's own arguments ([`LoadSpec::args_for`]).
pub fn virtual_gateways(sim: &Path, target: &str, ca: &Path, gateways_file: &Path, sessions: u32) -> Command {
    let mut c = crate::children::clean_command(sim);
    c.args(["gateways", "--target", target])
        .arg("--ca")
        .arg(ca)
        .arg("--gateways-file")
        .arg(gateways_file)
        .args(["--sessions-per-gateway", &sessions.to_string()]);
    c
}

/// mobile-sim's `n` phones straight to an aggregator's (or nginx's) `target`
/// (`wss://HOST:PORT/ws`), the certificate pinned to `ca`, each proving its device with a token
/// signed by `device_key`, connected at `rate` per second. The caller adds the load's own
/// arguments ([`LoadSpec::args_for`]).
pub fn direct_phones(sim: &Path, target: &str, ca: &Path, device_key: &Path, n: u64, rate: &str) -> Command {
    let mut c = crate::children::clean_command(sim);
    c.args(["phones", "--target", target]).arg("--ca").arg(ca).arg("--device-key").arg(device_key).args([
        "--phones",
        &n.to_string(),
        "--rate",
        rate,
    ]);
    c
}

impl Cluster {
    fn sim(&self) -> Command {
        crate::children::clean_command(&self.sim_bin())
    }

    fn sim_bin(&self) -> PathBuf {
        self.settings.bin.join("mobile-sim")
    }

    /// Starts gateway `i` (gw-i, 1-based) with its phones, each sending a byte every
    /// min..max interval for the spec's duration, then closing and verifying. `trunk_url`: another
    /// way to the aggregators for this gateway's trunks (a drill's relay), virtual gateways only.
    ///
    /// This is the one place that knows what "a gateway" is: mobile-sim's virtual gateway (the
    /// trunk crate's real state machine with its phones inside) or firmware/host's `gateway`
    /// with mobile-sim phones over ws:// to it.
    pub async fn start_gateway_load(
        &mut self,
        i: u32,
        spec: &LoadSpec,
        trunk_url: Option<&str>,
    ) -> anyhow::Result<Load> {
        let g = self.provisioned(i)?.clone();
        let report = self.dir.join(format!("gateway-{i}.report"));
        let phones = u64::from(self.settings.sessions);
        match self.settings.gateway {
            GatewayKind::Virtual => {
                let file = self.dir.join(format!("gateway-{i}.txt"));
                std::fs::write(&file, format!("{} {}\n", g.name, g.secret))?;
                let target = match trunk_url {
                    Some(u) => u.to_owned(),
                    None => format!("wss://localhost:{}/trunk", self.port),
                };
                let mut c =
                    virtual_gateways(&self.sim_bin(), &target, &self.ca(), &file, self.settings.sessions);
                c.args(["--links", &self.settings.links.to_string()]).args(spec.args(self, &spec.prefix));
                let name = format!("gateway-{i}");
                let p = Proc::spawn(&name, c, 0, &self.dir, Some(&report))?;
                self.remember(p);
                Ok(Load { name, report, phones })
            }
            GatewayKind::Host => {
                if trunk_url.is_some() {
                    bail!("a host gateway's trunks go to nginx; another way is for virtual gateways");
                }
                self.spawn_host_gateway(i).await?;
                // Phones of a real gateway are device ids of their own: "PREFIX gw-i -" keeps
                // them apart.
                let prefix = format!("{}{}-", spec.prefix, g.name);
                let mut c = self.sim();
                c.args(["phones", "--target", &format!("ws://{}/ws", self.host_gateway_addr(i))])
                    .args(["--phones", &self.settings.sessions.to_string(), "--rate", GATEWAY_PHONES_RATE])
                    .arg("--device-key")
                    .arg(self.device_key())
                    .args(spec.args(self, &prefix));
                let name = format!("gateway-{i}-phones");
                let p = Proc::spawn(&name, c, 0, &self.dir, Some(&report))?;
                self.remember(p);
                Ok(Load { name, report, phones })
            }
        }
    }

    /// Starts every provisioned gateway as one mobile-sim process of virtual gateways (`lab
    /// bench trunks`: many trunks from one load generator, not one process per gateway), each
    /// with the cluster's sessions and links, its trunks through nginx. Named `gateways`.
    pub fn start_virtual_gateways(&mut self, spec: &LoadSpec) -> anyhow::Result<Load> {
        let n = self.settings.gateways as usize;
        if n == 0 || self.gateways.len() < n {
            bail!("{n} gateways wanted, {} provisioned", self.gateways.len());
        }
        let file = self.dir.join("gateways.txt");
        let lines: String = self.gateways[..n].iter().map(|g| format!("{} {}\n", g.name, g.secret)).collect();
        std::fs::write(&file, lines).with_context(|| format!("writing {}", file.display()))?;
        let report = self.dir.join("gateways.report");
        let target =
            spec.trunk_target.clone().unwrap_or_else(|| format!("wss://localhost:{}/trunk", self.port));
        let mut c = virtual_gateways(&self.sim_bin(), &target, &self.ca(), &file, self.settings.sessions);
        c.args(["--gateways", &n.to_string()])
            .args(["--links", &self.settings.links.to_string()])
            .args(spec.args(self, &spec.prefix));
        let p = Proc::spawn("gateways", c, 0, &self.dir, Some(&report))?;
        self.remember(p);
        let phones = n as u64 * u64::from(self.settings.sessions);
        Ok(Load { name: "gateways".into(), report, phones })
    }

    fn provisioned(&self, i: u32) -> anyhow::Result<&super::Provisioned> {
        (i as usize).checked_sub(1).and_then(|k| self.gateways.get(k)).with_context(|| {
            format!("gateway {i} is not provisioned (the cluster has {})", self.gateways.len())
        })
    }

    /// Starts host gateway `i` (firmware/host's `gateway`, as gw-i) on 127.0.2.i, its trunks
    /// through nginx; waits until it listens. Also how a drill restarts one (its status lines,
    /// `live=N` once a second, start again in `gateway-i.out`).
    pub async fn spawn_host_gateway(&mut self, i: u32) -> anyhow::Result<()> {
        let g = self.provisioned(i)?.clone();
        let bin = self.settings.bin.join("gateway");
        if !bin.is_file() {
            bail!("no host gateway binary at {} (cargo build --release -p gateway)", bin.display());
        }
        // Phones prove their device at the gateway too: it checks their tokens with the key.
        let mut k = self.aggregator();
        k.arg("--device-key").arg(self.device_key()).args(["device", "public-key"]);
        let device_public_key = crate::children::output(k).await?.trim().to_owned();
        let listen = self.host_gateway_addr(i);
        let mut c = crate::children::clean_command(&bin);
        c.args(["--listen", &listen.to_string(), "--aggregator", &self.front().to_string()])
            .args(["--server-name", "localhost"])
            .arg("--ca")
            .arg(self.ca())
            .args(["--id", &g.name, "--secret", &g.secret])
            .args(["--links", &self.settings.links.to_string()])
            .args(["--capacity", &self.settings.sessions.to_string()])
            .args(["--device-public-key", &device_public_key, "--status-interval-s", "1"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let name = format!("gateway-{i}");
        let out = self.dir.join(format!("{name}.out"));
        let mut p = Proc::spawn(&name, c, 0, &self.dir, Some(&out))?;
        crate::hold::wait_listening(&mut p, listen).await?;
        self.remember(p);
        Ok(())
    }

    /// Starts `n` phones straight to the aggregators through nginx (wss://.../ws), for phones
    /// with no gateway nearby; `foreground`: their progress and text report on the lab's own
    /// terminal.
    pub fn start_direct_phones(&mut self, n: u64, spec: &LoadSpec, foreground: bool) -> anyhow::Result<Load> {
        let report = self.dir.join("phones.report");
        let target = format!("wss://localhost:{}/ws", self.port);
        let mut c =
            direct_phones(&self.sim_bin(), &target, &self.ca(), &self.device_key(), n, DIRECT_PHONES_RATE);
        c.args(spec.args(self, &spec.prefix));
        let p = if foreground {
            Proc::spawn_foreground("phones", c, self.dir.join("phones.log"))?
        } else {
            Proc::spawn("phones", c, 0, &self.dir, Some(&report))?
        };
        self.remember(p);
        Ok(Load { name: "phones".into(), report, phones: n })
    }
}

/// The fault of a check of the checks (scripts/fault-checks.sh), when `HOLDFAST_FAULT` asks for
/// one: it breaks the PostgreSQL database at `url` after the migrations, before any load, with
/// scripts/faults/NAME.sql (compiled in). `lab cluster`, `lab drills`, `lab e2e`, `lab hold` and
/// the benches on one aggregator ([`crate::bench::solo`]) call it.
/// Without `HOLDFAST_FAULT` it does nothing. Never set it outside those checks.
pub async fn inject_fault(url: &str) -> anyhow::Result<()> {
    let fault = std::env::var("HOLDFAST_FAULT").unwrap_or_default();
    let sql = match fault.as_str() {
        "" => return Ok(()),
        "drop-writes" => include_str!("../../../scripts/faults/drop-writes.sql"),
        "fail-reads" => include_str!("../../../scripts/faults/fail-reads.sql"),
        "fold-loses" => include_str!("../../../scripts/faults/fold-loses.sql"),
        "fold-keeps" => include_str!("../../../scripts/faults/fold-keeps.sql"),
        other => bail!("unknown HOLDFAST_FAULT '{other}' (drop-writes, fail-reads, fold-loses, fold-keeps)"),
    };
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        bail!("HOLDFAST_FAULT={fault} needs PostgreSQL, not {url}");
    }
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sql)
        .execute(&mut db)
        .await
        .with_context(|| format!("could not inject the fault {fault}"))?;
    eprintln!("lab: FAULT INJECTED into the database: {fault} (a check of the checks; this run must fail)");
    Ok(())
}
