//! `scripts/firmware.sh flash` (issue #14, item 5), everything of it that runs without a board:
//! from the line `aggregator gateway add` printed it builds the NUCLEO image and writes the
//! provisioning block; without probe-rs or a probe it says so and exits 3, flashing nothing; and
//! the block it wrote is real: the QEMU board boots with it and brings its trunks up to the
//! aggregator as that gateway.

mod support;

use std::process::Command;
use std::time::Duration;

use support::qemu::{Qemu, ROOT};
use support::{gateway_binary, Aggregator, Kind};

#[tokio::test(flavor = "multi_thread")]
async fn flash_writes_the_block_a_board_boots_with_and_says_when_there_is_no_probe() {
    let Some(agg) = Aggregator::start(Kind::Sqlite, &[]).await else { return };
    let secret = agg.add_gateway("site-flash");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // What `aggregator gateway add site-flash` printed.
    let added = agg.data_dir().join("added.txt");
    std::fs::write(&added, format!("site-flash {hex}\n")).unwrap();
    let block = agg.data_dir().join("site-flash.prov.bin");
    let flash = |extra: &[&str]| {
        Command::new("bash")
            .arg(format!("{ROOT}/scripts/firmware.sh"))
            .arg("flash")
            .arg("--added")
            .arg(&added)
            .arg("--ca")
            .arg(agg.ca())
            .args(["--aggregator", &Qemu::aggregator(&agg), "--server-name", "localhost", "--block"])
            .arg(&block)
            .args(["--device-public-key", &agg.device_public_key()])
            .args(extra)
            .env("HOLDFAST_GATEWAY_BIN", gateway_binary())
            .output()
            .expect("bash scripts/firmware.sh flash")
    };

    // Without a probe (CI machines have no probe-rs; where it is installed, no board is attached
    // either): a clear refusal, exit 3, nothing flashed; the block is written first.
    let out = flash(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "flash without a probe: {stderr}");
    assert!(
        stderr.contains("probe-rs is not installed") || stderr.contains("no debug probe found"),
        "the refusal says why: {stderr}"
    );
    assert!(stderr.contains("nothing was flashed"), "{stderr}");
    assert!(block.exists(), "the provisioning block was written before looking for a probe");

    // --no-flash stops after the block, successfully.
    std::fs::remove_file(&block).unwrap();
    let out = flash(&["--no-flash"]);
    assert!(out.status.success(), "flash --no-flash: {}", String::from_utf8_lossy(&out.stderr));

    // The block is the gateway: the board boots with it and its trunks come up as site-flash,
    // asking phones for tokens checked with the operator's key.
    let qemu = Qemu::start(&block, None);
    qemu.wait_for("provisioned, sha256", Duration::from_secs(600));
    qemu.wait_for("gateway site-flash up", Duration::from_secs(60));
    qemu.wait_for("trunk link 0: TLS 1.3 and WebSocket up", Duration::from_secs(60));
    assert!(!qemu.logged("phones are not asked to prove their device"), "the block has the device key");
}
