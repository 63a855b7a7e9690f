//! The service in this test's own process, in the style of mini-redis's `server::run(listener,
//! shutdown)`: the test binds port 0, hands the listener and a stop signal to
//! [`aggregator::Service::run`], and tells it when to stop. (Tests of the process itself, its
//! signals, SIGKILL and workers, start the binary: testkit::process.)

mod support;

use std::time::Duration;

use clap::Parser as _;
use futures_util::SinkExt;
use support::clients::{phone, wait_durable};

#[tokio::test]
async fn the_service_runs_in_process_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut cli = aggregator::config::Cli::parse_from([
        "aggregator",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--dashboard-token",
        "in-process-token",
        "--flush-interval-ms",
        "20",
    ]);
    // The embedded store in `dir`, whatever DATABASE_URL the environment has (flags read it).
    cli.serve.database_url = None;
    let service = aggregator::Service::prepare(cli.serve).await.expect("settings that work");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(service.run(listener, async {
        let _ = stopped.await;
    }));

    let mut ws = phone(addr, dir.path(), "in-process").await;
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8; 4])).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 4).await, 4);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), running).await;
    let result = result.expect("the service stops within its grace period").unwrap();
    assert!(result.is_ok(), "{result:?}");
    let store = aggregator::store::Store::open(None, dir.path(), 1).await.unwrap();
    assert_eq!(store.device_totals("in-process").await.unwrap(), vec![("in-process".to_owned(), 4)]);
}
