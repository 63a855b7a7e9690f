//! What phones do in tests of both tiers that admit them (the aggregator and the gateways).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long [`wait_durable`] waits: long enough for a flush on a CI machine busy with builds.
pub const DURABLE_WITHIN: Duration = Duration::from_secs(60);

/// Reads the phone's messages until the server says at least `want` bytes are durable, and
/// answers that total (a test that expects exactly `want` compares it). Panics when the
/// connection ends or after [`DURABLE_WITHIN`].
pub async fn wait_durable<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + DURABLE_WITHIN;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no durable total of {want} within {DURABLE_WITHIN:?}"));
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("a JSON message");
                let durable = v["durable"].as_u64().unwrap_or_else(|| panic!("no durable total in {t}"));
                if durable >= want {
                    return durable;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the phone's connection ended while waiting for {want} durable: {other:?}"),
        }
    }
}

/// How [`ping_and_talk`] ended for the pinging phone.
#[derive(Debug)]
pub struct Pinged {
    /// The close frame it was sent (`None` when the server closed without one, or never did).
    pub close: Option<CloseFrame>,
    /// Whether the server closed it at all within the time given.
    pub closed: bool,
    /// How long after the start it was closed.
    pub after: Duration,
    /// Bytes the talking phone sent meanwhile (one per round).
    pub talked: u64,
}

/// Every `every`, the `pinger` sends a WebSocket ping and nothing else, and the `talker` sends one
/// byte; until the server closes the pinger or `within` passes. (Idle must mean "no byte
/// counted": a client that only pings must not keep a place for ever, issue #12 M7.)
pub async fn ping_and_talk<S: AsyncRead + AsyncWrite + Unpin>(
    pinger: &mut WebSocketStream<S>,
    talker: &mut WebSocketStream<S>,
    every: Duration,
    within: Duration,
) -> Pinged {
    let started = tokio::time::Instant::now();
    let mut talked = 0;
    while started.elapsed() < within {
        talker.send(Message::binary(vec![7u8])).await.expect("the talking phone stays connected");
        talked += 1;
        let _ = pinger.send(Message::Ping(vec![1u8].into())).await;
        let round = tokio::time::Instant::now() + every;
        while let Ok(next) = tokio::time::timeout_at(round, pinger.next()).await {
            let close = match next {
                Some(Ok(Message::Close(frame))) => frame,
                Some(Ok(_)) => continue,
                _ => None,
            };
            return Pinged { close, closed: true, after: started.elapsed(), talked };
        }
    }
    Pinged { close: None, closed: false, after: started.elapsed(), talked }
}
