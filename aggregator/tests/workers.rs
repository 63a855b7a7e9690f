//! `--workers N`: several processes share the port, so one machine holds more connections than
//! one process may open files.

mod support;

use futures_util::SinkExt;
use support::clients::{phone, wait_durable};
use support::db::Kind;
use support::process::Aggregator;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn two_workers_share_the_port_and_stop_together() {
    let port = {
        // A free port: SO_REUSEPORT needs one fixed port for every worker.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Some(mut agg) = Aggregator::start_at(Kind::Sqlite, &["--workers", "2"], port).await else { return };
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", agg.pid(), agg.pid())).unwrap();
    assert_eq!(children.split_whitespace().count(), 2, "two worker processes");
    let mut phones = Vec::new();
    for i in 0..40 {
        let mut ws = phone(agg.addr, &agg.ca(), &format!("w-{i:02}")).await;
        ws.send(Message::binary(vec![1u8; 2])).await.unwrap();
        phones.push(ws);
    }
    for ws in &mut phones {
        assert_eq!(wait_durable(ws, 2).await, 2);
    }
    let totals = agg.store().await.device_totals("w-").await.unwrap();
    assert_eq!(totals.len(), 40);
    assert!(totals.iter().all(|(_, b)| *b == 2));
    let status = tokio::task::spawn_blocking(move || agg.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
}
