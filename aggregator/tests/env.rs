//! An empty `HOLDFAST_*` or `DATABASE_URL` variable means unset (the `cli-env` crate): the real
//! binary, with every setting it reads from the environment set to "", behaves as with none.

mod support;

use std::process::Command;

/// Every environment variable the aggregator's settings read, from the source of its settings,
/// so a setting added later is covered too.
fn setting_variables() -> Vec<String> {
    let config = include_str!("../src/config.rs");
    let names: Vec<String> =
        config.split("env = \"").skip(1).map(|rest| rest.split('"').next().unwrap().to_owned()).collect();
    assert!(names.len() >= 20 && names.contains(&"DATABASE_URL".to_owned()), "{names:?}");
    names
}

#[test]
fn empty_settings_in_the_environment_mean_unset() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(support::process::binary());
    c.arg("--data-dir").arg(dir.path()).args(["gateway", "add", "site-env"]);
    for name in setting_variables() {
        c.env(name, "");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "empty variables were taken as values: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("site-env "));
    // DATABASE_URL="" is no URL: the embedded store in the data folder was used.
    assert!(dir.path().join("holdfast.db").exists());
}
