//! An empty `HOLDFAST_*` or `DATABASE_URL` variable means unset (the `cli-env` crate): the real
//! binary, with every setting it reads from the environment set to "", behaves as with none.

mod support;

use std::process::Command;

/// Every environment variable the aggregator's settings read.
fn setting_variables() -> Vec<String> {
    let names = testkit::env_settings(include_str!("../src/config.rs"));
    assert!(names.len() >= 20 && names.contains(&"DATABASE_URL".to_owned()), "{names:?}");
    names
}

#[test]
fn empty_settings_in_the_environment_mean_unset() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(support::process::binary());
    c.arg("--data-dir").arg(dir.path()).args(["gateway", "add", "site-env"]);
    let out = testkit::run_with_empty_settings(&mut c, &setting_variables());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("site-env "));
    // DATABASE_URL="" is no URL: the embedded store in the data folder was used.
    assert!(dir.path().join("holdfast.db").exists());
}
