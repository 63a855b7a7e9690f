//! The listener: accepts TCP, terminates TLS 1.3 (unless `--plain`), and serves HTTP/1.1 with
//! upgrades on every connection, with a timeout on everything before the request head.
//!
//! TLS is the shared `lean-tls` crate's stream over rustls's unbuffered server connection, not
//! tokio-rustls: rustls's buffered connection keeps a receive buffer of at least 4 KiB for the
//! whole life of a connection, which was most of what an idle phone cost here
//! (`docs/benchmarks.md`, "Memory per idle direct phone"). This one holds its buffers only while
//! bytes are in flight. TLS is accepted before the request says what the connection is (a phone
//! on `/ws`, a trunk on `/trunk`, a page), so trunks and pages ride on it too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lean_tls::tokio_io::LeanTlsStream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::state::Shared;
use address_limits::{AddressLimits, Slot};

/// Binds `addr`; with `reuse_port`, several worker processes can listen on the same port and the
/// kernel spreads connections among them.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog: phones reconnecting together arrive in bursts.
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until shutdown begins, each within its address's bounds (`limits`).
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: Arc<AddressLimits>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = crate::shutdown::requested(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => match limits.admit(peer.ip()) {
                Ok(slot) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(shared.clone(), tcp, peer, slot, tls.clone()));
                }
                Err(refusal) => {
                    shared.metrics.refuse(refusal.reason());
                    debug!(%peer, "{refusal}");
                    if tls.is_none() {
                        // Plain HTTP can be told why for the price of one write that never
                        // waits; over TLS that would take a handshake, the very work refused.
                        let _ = tcp.try_write(refusal_response(refusal).as_bytes());
                    }
                }
            },
            Err(e) => {
                // EMFILE and friends: the open-file limit is the bound of this process. Refusing
                // by not accepting lets the backlog (and the balancer) absorb the burst.
                shared.metrics.refuse("accept failed");
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The whole answer to a connection beyond its address's bounds.
fn refusal_response(refusal: address_limits::Refusal) -> String {
    let body = format!("{}\n", refusal.reason());
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 10\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `slot`: the connection's place under its address's bounds, held until it ends.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    tls: Option<Arc<ServerConfig>>,
) {
    match tls {
        None => serve_http(shared, tcp, peer, slot).await,
        Some(config) => {
            let handshake = LeanTlsStream::accept(config, tcp);
            match tokio::time::timeout(shared.settings.handshake_timeout(), handshake).await {
                Ok(Ok(stream)) => serve_http(shared, stream, peer, slot).await,
                Ok(Err(e)) => {
                    shared.metrics.refuse("tls handshake failed");
                    debug!(%peer, error = %e, "tls handshake failed");
                }
                Err(_) => {
                    shared.metrics.refuse("handshake timeout");
                    debug!(%peer, "tls handshake timed out");
                }
            }
        }
    }
}

async fn serve_http<I>(shared: Arc<Shared>, io: I, peer: SocketAddr, slot: Slot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.settings.handshake_timeout();
    let mut shutdown = shared.shutdown.clone();
    // Requests served on this connection: a browser keeps its connection open after a page
    // and lets the header timeout end it, which is no refusal.
    let served = Arc::new(AtomicU64::new(0));
    let svc = {
        let (shared, served) = (shared.clone(), served.clone());
        // The upgrades take a clone of the slot along: the place is held until the session ends.
        service_fn(move |req| {
            served.fetch_add(1, Ordering::Relaxed);
            crate::http::route(shared.clone(), peer, slot.clone(), req)
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::shutdown::requested(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && served.load(Ordering::Relaxed) == 0 {
            shared.metrics.refuse("handshake timeout");
        } else if e.is_parse() || e.is_parse_too_large() {
            shared.metrics.refuse("bad http request");
        }
        debug!(%peer, error = %e, "http connection ended with an error");
    }
}
