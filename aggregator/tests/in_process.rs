//! The service in this test's own process, in the style of mini-redis's `server::run(listener,
//! shutdown)`: `testkit::process::Aggregator::in_process` binds port 0, hands the listener and a
//! stop signal to [`aggregator::Service::run`] on a thread of its own, and tells it when to stop.
//! (Tests of the process itself, its signals, SIGKILL and workers, start the binary:
//! `Aggregator::start`.)

mod support;

use futures_util::SinkExt;
use support::clients::{phone, wait_durable};
use support::db::Kind;
use support::process::Aggregator;

#[tokio::test]
async fn the_service_runs_in_process_and_stops_when_told() {
    let args = ["--dashboard-token", "in-process-token", "--flush-interval-ms", "20"];
    let mut agg = Aggregator::in_process(Kind::Sqlite, &args).await.expect("SQLite needs no server");
    assert_eq!(agg.token(), "in-process-token");

    let mut ws = phone(agg.addr, agg.data_dir(), "in-process").await;
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8; 4])).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 4).await, 4);

    // Stopped gracefully (as SIGTERM stops the binary), within its grace period and a second.
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), agg.stop()).await;
    assert_eq!(stopped.expect("the service stops within its grace period"), Ok(()));
    let store = agg.store().await;
    assert_eq!(store.device_totals("in-process").await.unwrap(), vec![("in-process".to_owned(), 4)]);
}
