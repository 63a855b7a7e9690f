//! Gateway trunks against the real aggregator process and real databases: exact totals through a
//! dropped link and through a SIGKILL of the aggregator, and refusals for gateways that cannot
//! prove who they are.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::clients::TestGateway;
use support::db::Kind;
use support::process::Aggregator;
use trunk::frame::CloseReason;
use trunk::gateway::SessionId;

const SESSIONS: usize = 10_000;

/// Opens every session of `gw` with device `{prefix}{i}`; returns ids and devices.
fn open_all(gw: &mut TestGateway, prefix: &str, n: usize) -> Vec<(SessionId, String)> {
    (0..n)
        .map(|i| {
            let device = format!("{prefix}{i:05}");
            (gw.gw.open(Some(device.as_bytes())).unwrap(), device)
        })
        .collect()
}

/// Each session sends `round % 3 + 1 + (i % 2)` bytes: a few bytes per session per round.
fn send_round(
    gw: &mut TestGateway,
    sessions: &[(SessionId, String)],
    round: u64,
    sent: &mut HashMap<String, u64>,
) {
    for (i, (id, device)) in sessions.iter().enumerate() {
        let n = round % 3 + 1 + (i as u64 % 2);
        gw.gw.record(*id, n).unwrap();
        *sent.entry(device.clone()).or_default() += n;
    }
}

async fn check_exact(agg: &Aggregator, prefix: &str, sent: &HashMap<String, u64>) {
    let persisted: HashMap<String, u64> =
        agg.store().await.device_totals(prefix).await.unwrap().into_iter().collect();
    assert_eq!(persisted.len(), sent.len(), "one device row per session");
    let wrong: Vec<_> = sent.iter().filter(|(d, n)| persisted.get(*d) != Some(n)).take(5).collect();
    assert!(wrong.is_empty(), "devices whose persisted total differs from sent (first 5): {wrong:?}");
}

async fn ten_thousand_sessions_survive_a_dropped_link(kind: Kind) {
    let Some(agg) = Aggregator::start(kind, &["--flush-interval-ms", "50"]).await else { return };
    let secret = agg.add_gateway("site-a");
    let mut gw = TestGateway::new(agg.addr, &agg.ca(), b"site-a", &secret, SESSIONS, 2);
    assert!(gw.connect(0).await && gw.connect(1).await);
    let sessions = open_all(&mut gw, "a-", SESSIONS);
    let mut sent = HashMap::new();
    for round in 0..6 {
        send_round(&mut gw, &sessions, round, &mut sent);
        gw.pump(Duration::from_millis(60), false).await;
        if round == 2 {
            // Mid-stream: reports of link 0 are in flight, some committed, some not acknowledged.
            gw.drop_link(0);
        }
    }
    let durable_before: u64 = sessions.iter().map(|(id, _)| gw.gw.durable(*id).unwrap()).sum();
    let total: u64 = sent.values().sum();
    assert!(durable_before < total, "the test must drop the link with counts in flight");
    // Link 0 comes back; everything not acknowledged is replayed.
    gw.pump_until(Duration::from_secs(60), |g| sessions.iter().all(|(id, _)| g.durable(*id) == g.total(*id)))
        .await;
    check_exact(&agg, "a-", &sent).await;

    // Closing every session: the gateway forgets them only once their closes are durable.
    for (id, _) in &sessions {
        gw.gw.close(*id, CloseReason::NORMAL).unwrap();
    }
    gw.pump_until(Duration::from_secs(60), |g| g.live_sessions() == 0).await;
    check_exact(&agg, "a-", &sent).await;
}

#[tokio::test]
async fn ten_thousand_sessions_survive_a_dropped_link_sqlite() {
    ten_thousand_sessions_survive_a_dropped_link(Kind::Sqlite).await;
}

#[tokio::test]
async fn ten_thousand_sessions_survive_a_dropped_link_postgres() {
    ten_thousand_sessions_survive_a_dropped_link(Kind::Postgres).await;
}

async fn a_sigkilled_aggregator_loses_nothing_it_acknowledged(kind: Kind) {
    let Some(mut agg) = Aggregator::start(kind, &["--flush-interval-ms", "30"]).await else { return };
    let secret = agg.add_gateway("site-k");
    let mut gw = TestGateway::new(agg.addr, &agg.ca(), b"site-k", &secret, 2_000, 2);
    assert!(gw.connect(0).await && gw.connect(1).await);
    let sessions = open_all(&mut gw, "k-", 2_000);
    let mut sent = HashMap::new();
    for round in 0..5 {
        send_round(&mut gw, &sessions, round, &mut sent);
        gw.pump(Duration::from_millis(40), false).await;
    }
    gw.pump_until(Duration::from_secs(30), |g| sessions.iter().any(|(id, _)| g.durable(*id) > Some(0))).await;
    // Mid-stream: more counts go out, and the aggregator dies before it can commit them all.
    send_round(&mut gw, &sessions, 5, &mut sent);
    gw.pump(Duration::from_millis(10), false).await;
    agg.kill();
    let told: Vec<(String, u64)> =
        sessions.iter().map(|(id, d)| (d.clone(), gw.gw.durable(*id).unwrap())).collect();
    assert!(told.iter().any(|(_, n)| *n > 0), "some counts were acknowledged before the kill");

    // Every count the gateway was told was durable is in the database, before any replay.
    let persisted: HashMap<String, u64> =
        agg.store().await.device_totals("k-").await.unwrap().into_iter().collect();
    for (device, durable) in &told {
        assert!(persisted.get(device).copied().unwrap_or(0) >= *durable, "{device}: told {durable} durable");
    }

    // The gateway keeps counting while the aggregator is down, then replays to the new process.
    gw.pump(Duration::from_millis(200), true).await;
    send_round(&mut gw, &sessions, 6, &mut sent);
    agg.spawn();
    gw.pump_until(Duration::from_secs(60), |g| sessions.iter().all(|(id, _)| g.durable(*id) == g.total(*id)))
        .await;
    check_exact(&agg, "k-", &sent).await;
}

#[tokio::test]
async fn a_sigkilled_aggregator_loses_nothing_it_acknowledged_sqlite() {
    a_sigkilled_aggregator_loses_nothing_it_acknowledged(Kind::Sqlite).await;
}

#[tokio::test]
async fn a_sigkilled_aggregator_loses_nothing_it_acknowledged_postgres() {
    a_sigkilled_aggregator_loses_nothing_it_acknowledged(Kind::Postgres).await;
}

#[tokio::test]
async fn unknown_gateways_and_wrong_secrets_are_refused_and_write_nothing() {
    let Some(agg) = Aggregator::start(Kind::Sqlite, &[]).await else { return };
    let secret = agg.add_gateway("site-real");
    for (name, secret) in [(&b"site-real"[..], b"not the secret".to_vec()), (b"site-ghost", secret)] {
        let mut gw = TestGateway::new(agg.addr, &agg.ca(), name, &secret, 10, 1);
        assert!(gw.connect(0).await);
        let id = gw.gw.open(Some(b"intruder")).unwrap();
        gw.gw.record(id, 5).unwrap();
        gw.pump(Duration::from_millis(300), false).await;
        assert_eq!(gw.refusals, 1, "{}: refused with a reason", String::from_utf8_lossy(name));
        assert_eq!(gw.gw.durable(id), Some(0));
    }
    assert!(agg.store().await.device_totals("intruder").await.unwrap().is_empty());
}

#[tokio::test]
async fn sigterm_sends_go_away_to_trunks_and_acknowledges_what_they_sent() {
    let Some(mut agg) = Aggregator::start(Kind::Sqlite, &["--shutdown-grace-ms", "1500"]).await else {
        return;
    };
    let secret = agg.add_gateway("site-t");
    let mut gw = TestGateway::new(agg.addr, &agg.ca(), b"site-t", &secret, 100, 1);
    assert!(gw.connect(0).await);
    let sessions = open_all(&mut gw, "t-", 100);
    let mut sent = HashMap::new();
    send_round(&mut gw, &sessions, 0, &mut sent);
    gw.pump_until(Duration::from_secs(10), |g| g.link_phase(0) == trunk::gateway::LinkPhase::Up).await;
    let terminated = tokio::task::spawn_blocking(move || (agg.terminate(), agg));
    let mut drained = false;
    while !terminated.is_finished() {
        gw.pump(Duration::from_millis(10), false).await;
        drained |= gw.gw.link_phase(0) == trunk::gateway::LinkPhase::Draining;
    }
    let (status, agg) = terminated.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(drained, "the gateway was told to go away before the link closed");
    assert!(
        sessions.iter().all(|(id, _)| gw.gw.durable(*id) == gw.gw.total(*id)),
        "acknowledged before closing"
    );
    check_exact(&agg, "t-", &sent).await;
}
