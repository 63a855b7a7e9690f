//! An empty `HOLDFAST_*` variable means unset (the `cli-env` crate, shared by every holdfast
//! binary): the gateway, with every setting it reads from the environment set to "", provisions
//! as with none.

mod support;

use std::process::Command;

/// Every environment variable the gateway's settings read.
fn setting_variables() -> Vec<String> {
    let names = testkit::env_settings(include_str!("../src/cli.rs"));
    assert!(names.len() >= 10 && names.iter().all(|n| n.starts_with("HOLDFAST_")), "{names:?}");
    names
}

#[test]
fn empty_settings_in_the_environment_mean_unset() {
    let dir = tempfile::tempdir().unwrap();
    // A CA to provision with: the aggregator's self-made one.
    aggregator::tls::server_config(None, None, dir.path(), &[], &[], trunk::frame::MAX_SERVER_TLS_PLAINTEXT)
        .unwrap();
    let block = dir.path().join("prov.bin");
    let mut c = Command::new(support::gateway_binary());
    c.args(["provision", "--id", "site-env", "--secret", &"ab".repeat(32), "--aggregator", "127.0.0.1:8443"])
        .arg("--ca")
        .arg(dir.path().join("ca.pem"))
        .arg("-o")
        .arg(&block);
    testkit::run_with_empty_settings(&mut c, &setting_variables());
    assert!(block.exists());
}
