//! What phones do in tests of both tiers that admit them (the aggregator and the gateways).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
