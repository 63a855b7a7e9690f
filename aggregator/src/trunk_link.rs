//! A gateway's trunk link, on `/trunk` (WebSocket subprotocol `trunk.v1`).
//!
//! One task per link, never one per session: a link's sessions are entries of the shared ledger.
//! The trunk crate does the protocol (handshake, frames, what to record); this task moves bytes
//! between it, the socket and the ledger, and enforces backpressure: while the ledger lacks room,
//! the socket is not read, TCP fills up, and the gateway keeps its counts.

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{info, warn};
use trunk::frame::{GoAwayReason, RefuseCode};
use trunk::server::{self, Handshake, HandshakeError, LinkError, ServerConfig, ServerLink};
use trunk::time::{Duration as TrunkDuration, Instant as TrunkInstant};

use crate::gateways::{Admission, BootSessions, Gateways, LinkLive, SessionSet, QUOTA_RETRY_MS};
use crate::routes::{Route, Routes, ToLink};
use crate::state::Shared;
use crate::store::{BootState, Store};
use crate::websocket::{close, send_within};
use address_limits::Slot;

/// What gateways are told to wait before reconnecting when this process shuts down: long enough
/// for the balancer to stop sending them here, short enough to be back within seconds.
const GO_AWAY_RETRY: TrunkDuration = TrunkDuration::from_millis(1_000);

/// The aggregator's clock as the trunk state machines take it.
fn trunk_now(shared: &Shared) -> TrunkInstant {
    TrunkInstant::from_millis(shared.now_ms())
}

type Ws<S> = WebSocketStream<S>;

thread_local! {
    /// The buffer trunk links encode what they send into: one per thread, not one per link. A
    /// message is encoded and copied out into a message of its own before its link awaits
    /// anything ([`encode`]), so no link keeps it between messages. (A buffer of
    /// `--max-trunk-message`, 64 KiB, per link for its whole life was part of what a trunk cost
    /// before: `docs/benchmarks.md`, "What a trunk costs the aggregator".)
    static TRANSMIT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The room a link's messages are encoded in: the longest message the gateway was told it may
/// receive (the Welcome carries `max_message_len`), and never less than the trunk crate's
/// smallest transmit buffer.
fn transmit_len(config: &ServerConfig) -> usize {
    config.max_message_len.max(trunk::gateway::MIN_TRANSMIT_BUFFER)
}

/// One message, encoded by `write` into this thread's [`TRANSMIT`] buffer (grown once to
/// [`transmit_len`]) and copied out; `Ok(None)` when `write` wrote nothing.
fn encode<E>(
    config: &ServerConfig,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<Option<Message>, E> {
    let len = transmit_len(config);
    // Taken out of the cell while in use: a nested call (there is none) would make a buffer of
    // its own rather than fail.
    let mut buf = TRANSMIT.take();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let message = write(&mut buf[..len]).map(|n| (n > 0).then(|| Message::binary(buf[..n].to_vec())));
    TRANSMIT.set(buf);
    message
}

/// Serves one trunk link until it closes. `handshaking`: its place among the handshakes in
/// progress (`--max-pending-trunks`), given back once the gateway is authenticated or refused;
/// `slot`: the connection's place under its address's bounds, settled once authenticated.
pub async fn serve<S>(
    shared: Arc<Shared>,
    mut ws: Ws<S>,
    peer: String,
    handshaking: OwnedSemaphorePermit,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared.settings.trunk();
    let mut nonce = [0u8; trunk::frame::NONCE_LEN];
    rand::fill(&mut nonce);
    let handshake = Handshake::new(nonce, trunk_now(&shared));
    let Ok(Some(challenge)) = encode(&config, |out| handshake.challenge(out)) else { return };
    if !send_within(&mut ws, challenge, shared.settings.send_timeout()).await {
        return;
    }

    let authenticated = authenticate(&shared, &mut ws, handshake, &peer).await;
    drop(handshaking);
    let (link, name, boot) = match authenticated {
        Ok(authenticated) => {
            slot.settle();
            authenticated
        }
        Err(reason) => {
            shared.metrics.refuse(reason);
            return;
        }
    };
    // Authenticated: now a place among the trunks this process holds.
    let Ok(permit) = shared.trunks.clone().try_acquire_owned() else {
        let reason = "trunk capacity reached";
        warn!(%peer, gateway = %name, "trunk refused: {reason}");
        let mut buf = [0u8; 300];
        if let Ok(n) = server::write_refuse(RefuseCode::OVERLOADED, reason, &mut buf) {
            let _ = send_within(&mut ws, Message::binary(buf[..n].to_vec()), shared.settings.send_timeout())
                .await;
        }
        close(&mut ws, CloseCode::Again, reason).await;
        shared.metrics.refuse(reason);
        return;
    };
    // Shutdown waits for the link while it holds this (shutdown::Drain); once the drain began,
    // a link that only now authenticated is turned away like any new connection.
    let Some(drain) = shared.drain.guard() else {
        close(&mut ws, CloseCode::Away, "server shutting down").await;
        shared.metrics.refuse("shutting down");
        return;
    };
    let gateway = link.gateway();
    let (tx, rx) = mpsc::unbounded_channel();
    let route = shared.routes.add(Route::Trunk(tx));
    let live =
        LinkLive { route, index: link.link_index(), peer: peer.clone(), since: std::time::Instant::now() };
    shared.gateways.link_up(gateway, &name, &boot, live);
    shared.metrics.trunks.inc();
    info!(%peer, gateway, link = link.link_index(), route, "trunk up");

    let outcome = run_link(&shared, &mut ws, link, &boot, route, rx).await;

    shared.routes.remove(route);
    shared.gateways.link_down(gateway, route);
    shared.metrics.trunks.dec();
    match outcome {
        Ok(()) => info!(%peer, gateway, route, "trunk closed"),
        Err(e) => {
            warn!(%peer, gateway, route, error = %e, "trunk closed on error");
            // A metric label: a small fixed set (a kind the trunk crate adds later counts as a
            // protocol error until it gets a label of its own).
            let reason = match e {
                LinkError::LedgerFull => "ledger full",
                LinkError::Idle => "trunk idle",
                _ => "trunk protocol error",
            };
            shared.metrics.bad_input(reason);
            refuse(&mut ws, &shared, e.refuse_code(), reason).await;
            close(&mut ws, CloseCode::Policy, reason).await;
        }
    }
    drop(permit);
    drop(drain);
}

/// Reads the Hello, checks it against the gateway's provisioned secret and its boot quota, and
/// sends the verdict: the link, the gateway's name and its boot's session quota, or why it was
/// refused.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut Ws<S>,
    handshake: Handshake,
    peer: &str,
) -> Result<(ServerLink, String, Arc<BootSessions>), &'static str> {
    let config = shared.settings.trunk();
    let first = match tokio::time::timeout(shared.settings.handshake_timeout(), next_binary(ws)).await {
        Err(_) => {
            warn!(%peer, "trunk handshake timed out");
            close(ws, CloseCode::Policy, "handshake timeout").await;
            return Err("handshake timeout");
        }
        Ok(None) => return Err("closed during handshake"),
        Ok(Some(m)) => m,
    };
    let verdict = match handshake.hello(&first, &config) {
        Err(e) => Err((e, String::new())),
        Ok(hello) => {
            let name = String::from_utf8_lossy(hello.gateway_id).into_owned();
            // With the other handshakes in progress, in one query (batch.rs).
            let lookup = shared.gateway_lookups.call(name.clone()).await;
            match lookup {
                Err(e) => {
                    warn!(%peer, gateway = %name, error = %e, "cannot look up gateway");
                    close(ws, CloseCode::Again, "database unavailable").await;
                    return Err("database unavailable");
                }
                Ok(record) => {
                    let secret = record.as_ref().map(|r| r.secret.as_slice());
                    let number = record.as_ref().map_or(0, |r| r.number);
                    match handshake.verify(&hello, secret, number, trunk_now(shared)) {
                        Ok(link) => Ok((link, name)),
                        Err(e) => Err((e, name)),
                    }
                }
            }
        }
    };
    match verdict {
        Ok((link, name)) => {
            // Before the boot is written to the database: a gateway over its boot quota adds
            // no row.
            let boot_quota = shared.gateways.check_boot(link.gateway(), link.boot_epoch(), Instant::now());
            let boot_state = match boot_quota {
                Ok(()) => shared.boot_records.call((link.gateway(), link.boot_epoch())).await,
                Err(_) => Ok(BootState::Current),
            };
            match boot_state {
                // (Taken only now: a folded boot must not supersede the gateway's live one.)
                Ok(BootState::Current) => match boot_quota.and_then(|()| {
                    shared.gateways.take_boot(link.gateway(), link.boot_epoch(), Instant::now())
                }) {
                    Ok(boot) => Ok((link, name, boot)),
                    Err(_) => {
                        let reason = "too many new boots of this gateway";
                        warn!(%peer, gateway = %name, boot_epoch = link.boot_epoch(), "trunk refused: {reason}");
                        refuse(ws, shared, RefuseCode::QUOTA, reason).await;
                        close(ws, CloseCode::Policy, reason).await;
                        Err("boot quota")
                    }
                },
                Ok(BootState::Folded) => {
                    // A newer boot of this gateway took over and this boot's sessions were
                    // folded (compactor.rs): nothing it reports could be written.
                    let reason = "this boot of the gateway was superseded by a newer one";
                    warn!(%peer, gateway = %name, boot_epoch = link.boot_epoch(), "trunk refused: {reason}");
                    let mut buf = [0u8; 300];
                    if let Ok(n) = server::write_refuse(RefuseCode::SUPERSEDED, reason, &mut buf) {
                        let _ = send_within(
                            ws,
                            Message::binary(buf[..n].to_vec()),
                            shared.settings.send_timeout(),
                        )
                        .await;
                    }
                    close(ws, CloseCode::Policy, "boot superseded").await;
                    Err("boot superseded")
                }
                Err(e) => {
                    warn!(%peer, gateway = %name, error = %e, "cannot record the gateway's boot");
                    close(ws, CloseCode::Again, "database unavailable").await;
                    Err("database unavailable")
                }
            }
        }
        Err((e, name)) => {
            warn!(%peer, gateway = %name, reason = e.reason(), "trunk refused");
            // An unknown name and a wrong secret get the same answer on the wire, so that a
            // refusal does not tell which gateway names exist (the log and metrics tell them apart).
            let (code, text) = match e {
                HandshakeError::UnknownGateway | HandshakeError::BadProof => {
                    (RefuseCode::BAD_PROOF, "gateway authentication failed")
                }
                _ => (e.refuse_code(), e.reason()),
            };
            let mut buf = [0u8; 300];
            if let Ok(n) = server::write_refuse(code, text, &mut buf) {
                let _ =
                    send_within(ws, Message::binary(buf[..n].to_vec()), shared.settings.send_timeout()).await;
            }
            close(ws, CloseCode::Policy, text).await;
            Err(match e {
                HandshakeError::UnknownGateway => "unknown gateway",
                HandshakeError::BadProof => "bad proof",
                _ => "bad trunk handshake",
            })
        }
    }
}

/// The next binary message, skipping pings; `None` when the link closed or broke.
async fn next_binary<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<Vec<u8>> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

async fn run_link<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut Ws<S>,
    mut link: ServerLink,
    boot: &BootSessions,
    route: u32,
    mut acks: mpsc::UnboundedReceiver<ToLink>,
) -> Result<(), LinkError> {
    let config = shared.settings.trunk();
    let mut shutdown = shared.shutdown.clone();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Whether the last pass left the link unread for want of ledger room (backpressure).
    let mut held_back = false;
    // A message that arrived when other links had taken the room this one saw before it waited:
    // it waits here, ahead of the socket, for a commit to free room. (Handled anyway, it would
    // fail half-way with LedgerFull and close the link.) With it, the sessions it reports about
    // beyond the gateway's quota, if any: the link is refused once the rest is recorded.
    let mut pending: Option<(Bytes, Option<SessionSet>)> = None;
    // The gateway went over its session quota: the link drains (a go-away), then is refused.
    let mut over_quota = false;
    loop {
        if held_back {
            // The gateway's messages waited unread meanwhile: not its silence.
            link.not_reading(trunk_now(shared));
        }
        // Anything the link itself has to say (welcome, pong, go-away)?
        let now = trunk_now(shared);
        let own = encode(&config, |out| link.poll_transmit(now, &config, out).map(|n| n.unwrap_or(0)))?;
        if let Some(message) = own {
            if !send_within(ws, message, shared.settings.send_timeout()).await {
                return Ok(());
            }
        }
        // Registered before the check, so a commit that frees room in between still wakes us.
        let room = shared.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        if let Some((message, refused)) = pending.take() {
            match deliver(shared, &mut link, message, refused, route)? {
                Delivery::Done => {}
                Delivery::Waiting(message, refused) => pending = Some((message, refused)),
                Delivery::OverQuota => {
                    quota_exceeded(shared, &mut link, boot, &mut over_quota, &mut drain_deadline)
                }
            }
        }
        let can_read = pending.is_none() && ServerLink::can_read(&shared.books().ledger, &config);
        held_back = !can_read;
        if held_back {
            // Backpressure: the gateway's messages wait unread, so it is not idle.
            link.not_reading(trunk_now(shared));
        }
        let idle_at = link.idle_deadline(&config);
        let idle_in = Duration::from(idle_at - trunk_now(shared));
        let drain = drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = crate::shutdown::requested(&mut shutdown), if drain_deadline.is_none() => {
                link.go_away(GO_AWAY_RETRY, GoAwayReason::SHUTDOWN);
                drain_deadline = Some(tokio::time::Instant::now() + shared.settings.shutdown_grace());
            }
            _ = tokio::time::sleep_until(drain) => {
                if over_quota {
                    let reason = "too many sessions for this gateway";
                    refuse(ws, shared, RefuseCode::QUOTA, reason).await;
                    close(ws, CloseCode::Policy, reason).await;
                    shared.metrics.refuse("session quota");
                } else {
                    close(ws, CloseCode::Away, "server shutting down").await;
                }
                return Ok(());
            }
            Some(to_link) = acks.recv() => {
                let entries = match to_link {
                    ToLink::Acks(entries) => {
                        // Acknowledged closes free their places in the gateway's quota.
                        boot.acknowledged(&entries);
                        entries
                    }
                    ToLink::Revoke => {
                        // Removed with `aggregator gateway remove`: it may not report any more.
                        let reason = "the gateway is no longer provisioned";
                        warn!(gateway = link.gateway(), "trunk closed: {reason}");
                        let mut out = [0u8; 300];
                        if let Ok(n) = server::write_refuse(RefuseCode::BAD_PROOF, reason, &mut out) {
                            let refusal = Message::binary(out[..n].to_vec());
                            let _ = send_within(ws, refusal, shared.settings.send_timeout()).await;
                        }
                        close(ws, CloseCode::Policy, reason).await;
                        shared.metrics.refuse("gateway removed");
                        return Ok(());
                    }
                };
                let mut entries = entries.into_iter().peekable();
                while let Ok(Some(message)) =
                    encode(&config, |out| Ok::<_, Infallible>(server::write_acks(&mut entries, out, &config)))
                {
                    if !send_within(ws, message, shared.settings.send_timeout()).await {
                        return Ok(());
                    }
                }
            }
            _ = &mut room, if !can_read => {}
            _ = tokio::time::sleep(idle_in) => {}
            message = ws.next(), if can_read => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Binary(message))) => {
                    let refused = match boot.admit(&message, config.max_payload_len) {
                        Admission::All => None,
                        Admission::Refused(sessions) => Some(sessions),
                        Admission::Superseded => {
                            let reason = "a newer boot of this gateway connected";
                            warn!(gateway = link.gateway(), boot_epoch = link.boot_epoch(), "trunk closed: {reason}");
                            refuse(ws, shared, RefuseCode::SUPERSEDED, reason).await;
                            close(ws, CloseCode::Policy, reason).await;
                            shared.metrics.refuse("boot superseded");
                            return Ok(());
                        }
                    };
                    match deliver(shared, &mut link, message, refused, route)? {
                        Delivery::Done => {}
                        Delivery::Waiting(message, refused) => pending = Some((message, refused)),
                        Delivery::OverQuota => {
                            quota_exceeded(shared, &mut link, boot, &mut over_quota, &mut drain_deadline)
                        }
                    }
                }
                Some(Ok(Message::Text(_))) => return Err(LinkError::Unexpected(0)),
                Some(Ok(_)) => {}
            },
        }
    }
}

/// What became of a message handed to [`deliver`].
enum Delivery {
    /// Recorded.
    Done,
    /// Recorded, except the reports of sessions beyond the gateway's quota: refuse the link.
    OverQuota,
    /// The ledger lacks the room it may need: it waits (with the sessions refused in it).
    Waiting(Bytes, Option<SessionSet>),
}

/// Puts a gateway's message into the ledger, or gives it back when the ledger lacks the room it
/// may need: the room check and the recording happen under one lock, since other links take room
/// too. Reports of the sessions in `refused` (beyond the gateway's quota) are left out.
fn deliver(
    shared: &Shared,
    link: &mut ServerLink,
    message: Bytes,
    refused: Option<SessionSet>,
    route: u32,
) -> Result<Delivery, LinkError> {
    let config = shared.settings.trunk();
    let now = trunk_now(shared);
    let received = {
        let mut books = shared.books();
        if !ServerLink::has_room_for(&books.ledger, &message) {
            return Ok(Delivery::Waiting(message, refused));
        }
        let r = match &refused {
            None => link.handle_message(&message, now, &config, &mut books.ledger, route)?,
            Some(refused) => {
                link.handle_message_admitting(&message, now, &config, &mut books.ledger, route, |session| {
                    !refused.contains(&session)
                })?
            }
        };
        if r.opens + r.counts + r.closes > 0 {
            shared.metrics.ledger_entries.set(books.ledger.len() as i64);
        }
        r
    };
    let m = &shared.metrics;
    m.trunk_sessions_opened.inc_by(received.opens as u64);
    m.trunk_sessions_closed.inc_by(received.closes as u64);
    m.trunk_count_reports.inc_by(received.counts as u64);
    // (The dashboard counted the message's sessions when the quota admitted them: gateways.rs.)
    match &refused {
        None => Ok(Delivery::Done),
        Some(_) => {
            shared.metrics.trunk_reports_over_quota.inc_by(received.skipped as u64);
            Ok(Delivery::OverQuota)
        }
    }
}

/// The gateway reported about more sessions than its quota (those reports were not recorded).
/// The link is refused, but not at once: first a go-away (the gateway sends no more reports on
/// it and reconnects no sooner than [`QUOTA_RETRY_MS`]), and the refusal only after the same
/// grace as at shutdown, so that what was recorded within the quota is acknowledged meanwhile:
/// acknowledged closes free places in the quota, and the gateway stops replaying what is
/// durable. Without that, a gateway over its quota could never get below it again.
fn quota_exceeded(
    shared: &Shared,
    link: &mut ServerLink,
    boot: &BootSessions,
    over_quota: &mut bool,
    drain_deadline: &mut Option<tokio::time::Instant>,
) {
    if std::mem::replace(over_quota, true) {
        return;
    }
    warn!(
        gateway = link.gateway(),
        sessions = boot.counted(),
        "trunk over its session quota: draining, then refused"
    );
    link.go_away(TrunkDuration::from_millis(QUOTA_RETRY_MS), GoAwayReason::OVERLOADED);
    let refuse_at = tokio::time::Instant::now() + shared.settings.shutdown_grace();
    *drain_deadline = Some(drain_deadline.map_or(refuse_at, |d| d.min(refuse_at)));
}

/// Sends a Refuse with `code` and `reason` (within the send timeout).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    shared: &Shared,
    code: RefuseCode,
    reason: &str,
) {
    let mut buf = [0u8; 300];
    if let Ok(n) = server::write_refuse(code, reason, &mut buf) {
        let _ = send_within(ws, Message::binary(buf[..n].to_vec()), shared.settings.send_timeout()).await;
    }
}

/// Closes the links of gateways removed (`aggregator gateway remove`, by any process) while they
/// were connected: every `--gateway-check-interval-ms`, the gateways with links here are checked
/// against the provisioned ones. A new link of a removed gateway is refused at its handshake.
///
/// A task of its own, given what it uses: the gateways with links here, where their links'
/// routes go, the store, and how often (`--gateway-check-interval-ms`).
pub async fn close_removed_gateways(
    gateways: Arc<Gateways>,
    routes: Arc<Routes>,
    store: Store,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        // On the same beat: the quotas of gateways long gone are forgotten (gateways.rs).
        gateways.forget_idle(std::time::Instant::now());
        let live = gateways.live_links();
        if live.is_empty() {
            continue;
        }
        let provisioned: std::collections::HashSet<u32> = match store.gateway_list().await {
            Ok(list) => list.iter().map(|g| g.number).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list gateways; checking again later");
                continue;
            }
        };
        for (number, links) in live {
            if !provisioned.contains(&number) {
                for route in links {
                    routes.revoke(route);
                }
            }
        }
    }
}
