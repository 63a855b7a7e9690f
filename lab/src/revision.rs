//! The binaries of another commit, built once and kept, for side-by-side runs: `lab build-rev`
//! prints their folder (for `--bin-dir`, or scripts/bench/old-vs-new.sh), and `lab hold-ab
//! --a-rev` / `--b-rev` runs a setting on them.
//!
//! Why a command: comparing a change with the commit before it, alternating runs in one script
//! (this machine's figures drift between evenings by more than most changes move them), needs
//! the old binaries; building them by hand each time (a worktree, a target folder, the right
//! packages) was repeated in every session that measured a change.
//!
//! A revision's source is taken with `git archive` (nothing of the working tree: no uncommitted
//! change leaks in) into `CACHE/rev-SHA/src` and built with `cargo build --release` into
//! `CACHE/rev-SHA/target`; both stay, so the next call for the same commit only checks that the
//! build is current. A first build starts from a copy of this checkout's release folder when one
//! is given (`--seed`): the dependencies then need no rebuild (about a minute on 2 cores instead
//! of eight); only the workspace's own crates compile again, since their path differs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::process::Command;

/// The packages whose binaries a run of the system needs (`lab hold`, `lab bench`).
pub const SYSTEM_PACKAGES: [&str; 3] = ["aggregator", "gateway", "mobile-sim"];

#[derive(Debug, clap::Args)]
pub struct BuildRevArgs {
    /// A git revision of this repository (a commit, a tag, `HEAD~3`, `main`).
    #[arg(value_name = "REV")]
    pub rev: String,

    /// A package to build (repeatable). Default: the aggregator, the host gateway and mobile-sim.
    #[arg(long = "package", short = 'p', value_name = "PKG")]
    pub packages: Vec<String>,

    /// Where revisions are kept. Default: $HOME/.cache/holdfast.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// A release folder whose build products a revision's first build starts from. Default:
    /// this checkout's ($CARGO_TARGET_DIR, else $HOME/.cache/holdfast/target, then /release),
    /// if it exists; `none` starts from nothing.
    #[arg(long, value_name = "DIR")]
    pub seed: Option<PathBuf>,
}

/// Runs `lab build-rev`: builds and prints the folder of the revision's binaries (`true`: built).
pub async fn run(args: BuildRevArgs) -> anyhow::Result<bool> {
    let packages: Vec<String> = if args.packages.is_empty() {
        SYSTEM_PACKAGES.iter().map(|p| p.to_string()).collect()
    } else {
        args.packages
    };
    let cache = args.cache.unwrap_or_else(default_cache);
    let seed = match args.seed {
        Some(dir) if dir == Path::new("none") => None,
        Some(dir) => Some(dir),
        None => Some(default_release_dir()).filter(|d| d.is_dir()),
    };
    let repo = checkout_root().await?;
    let bin_dir = build(&repo, &args.rev, &packages, &cache, seed.as_deref()).await?;
    println!("{}", bin_dir.display());
    Ok(true)
}

/// $HOME/.cache/holdfast: where the scripts keep their target folder and PostgreSQL's data.
pub fn default_cache() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/holdfast")
}

/// This checkout's release folder, as the scripts build it.
pub fn default_release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_cache().join("target"))
        .join("release")
}

/// Builds `packages` of revision `rev` of the repository that contains `repo` (the source from
/// `git archive`, kept under `cache`); returns the folder of its release binaries. `seed`: a
/// release folder the first build copies its products from.
pub async fn build(
    repo: &Path,
    rev: &str,
    packages: &[String],
    cache: &Path,
    seed: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if packages.is_empty() {
        bail!("no package to build");
    }
    let sha = git_output(repo, &["rev-parse", "--short=9", &format!("{rev}^{{commit}}")])
        .await
        .with_context(|| format!("{rev:?} is not a commit of this repository"))?;
    // The whole tree: `git archive` in a subfolder would take that folder alone.
    let repo = PathBuf::from(git_output(repo, &["rev-parse", "--show-toplevel"]).await?);
    let repo = repo.as_path();
    let home = cache.join(format!("rev-{sha}"));
    let (src, target) = (home.join("src"), home.join("target"));
    if !src.join("Cargo.toml").is_file() {
        extract(repo, &sha, &home, &src).await?;
    }
    let release = target.join("release");
    if let Some(seed) = seed.filter(|_| !target.exists()) {
        eprintln!("lab build-rev: {sha}'s first build starts from a copy of {}", seed.display());
        std::fs::create_dir_all(&target)?;
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(seed).arg(&release);
        run_checked(cp, "copying the seed").await?;
    }
    eprintln!("lab build-rev: building {} of {sha} (in {})", packages.join(", "), src.display());
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release", "--quiet", "--manifest-path"]).arg(src.join("Cargo.toml"));
    for p in packages {
        cargo.args(["-p", p]);
    }
    cargo.env("CARGO_TARGET_DIR", &target);
    run_checked(cargo, &format!("building {sha}")).await?;
    Ok(release)
}

/// `git archive SHA | tar -x`, into a fresh folder renamed to `src` once complete, so that a
/// build interrupted halfway is never taken for a whole source tree.
async fn extract(repo: &Path, sha: &str, home: &Path, src: &Path) -> anyhow::Result<()> {
    let partial = home.join("src.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut archive = std::process::Command::new("git");
    archive.current_dir(repo).args(["archive", sha]).stdout(Stdio::piped());
    let mut archive = archive.spawn().context("starting git archive")?;
    // --touch: the files get the time of extraction, not the commit's. With the commit's,
    // a build seeded from a newer checkout took its products for up to date and kept them:
    // the binaries of the wrong commit, silently.
    let tar = std::process::Command::new("tar")
        .args(["-x", "--touch", "-C"])
        .arg(&partial)
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("starting tar")?;
    let git = archive.wait()?;
    if !git.success() || !tar.success() {
        bail!("git archive {sha} | tar -x failed (git: {git}, tar: {tar})");
    }
    let _ = std::fs::remove_dir_all(src);
    std::fs::rename(&partial, src)?;
    Ok(())
}

/// This checkout's top folder, found from the current one: what `lab build-rev` archives and
/// `lab faults` runs the scripts of (the scripts `cd` there; a person may not).
pub async fn checkout_root() -> anyhow::Result<PathBuf> {
    let top = git_output(Path::new("."), &["rev-parse", "--show-toplevel"]).await.context(
        "run this inside a checkout of the repository (its scripts and revisions are found from here)",
    )?;
    Ok(PathBuf::from(top))
}

pub(crate) async fn git_output(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git").current_dir(repo).args(args).stderr(Stdio::piped()).output().await?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn run_checked(mut command: Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().await.with_context(|| format!("{what}: could not start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A revision's package is built from its commit, not from the working tree, and kept: the
    /// second call finds it. (address-limits: a crate of the workspace without dependencies.)
    #[tokio::test]
    async fn builds_a_commit_and_keeps_it() {
        let cache = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let packages = vec!["address-limits".to_owned()];
        let release = build(repo, "HEAD", &packages, cache.path(), None).await.unwrap();
        let sha = git_output(repo, &["rev-parse", "--short=9", "HEAD"]).await.unwrap();
        assert_eq!(release, cache.path().join(format!("rev-{sha}/target/release")));
        assert!(release.join("libaddress_limits.rlib").is_file(), "nothing built in {release:?}");
        let src = cache.path().join(format!("rev-{sha}/src"));
        assert!(
            src.join("Cargo.toml").is_file() && !cache.path().join(format!("rev-{sha}/src.partial")).exists()
        );
        // Kept: a second call builds nothing new and returns the same folder.
        let again = build(repo, "HEAD", &packages, cache.path(), None).await.unwrap();
        assert_eq!(again, release);
    }

    /// A build seeded with another folder's products compiles the revision's own source: the
    /// library names the folder it was compiled in. (With the commit's times on the files, cargo
    /// took the seed's copy for up to date.)
    #[tokio::test]
    async fn a_seeded_build_compiles_its_own_source() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let packages = vec!["address-limits".to_owned()];
        let seed = build(repo, "HEAD", &packages, first.path(), None).await.unwrap();
        let release = build(repo, "HEAD", &packages, second.path(), Some(&seed)).await.unwrap();
        let rlib = std::fs::read(release.join("libaddress_limits.rlib")).unwrap();
        let contains = |dir: &Path| {
            let needle = dir.to_str().unwrap().as_bytes();
            rlib.windows(needle.len()).any(|w| w == needle)
        };
        assert!(contains(second.path()), "not compiled in its own folder");
        assert!(!contains(first.path()), "the seed's copy was kept");
    }

    #[tokio::test]
    async fn a_revision_that_is_no_commit_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let err =
            build(repo, "no-such-revision-xyz", &["lab".to_owned()], cache.path(), None).await.unwrap_err();
        assert!(format!("{err:#}").contains("is not a commit"), "{err:#}");
    }
}
