//! The placeholder app: an HTTP server on port 80 that answers every request
//! with `200 OK` and a short body, [`LISTENERS`] connections at a time.
//!
//! It exists so that the board, its Ethernet driver, DHCP and QEMU's
//! `hostfwd` path can be tested before the gateway core is plugged in
//! (`scripts/firmware.sh smoke` fetches this page). The gateway core replaces
//! the call in each board's `src/app.rs`.

use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use embedded_io_async::Write;
use log::{info, warn};

/// TCP port the placeholder listens on.
pub const PORT: u16 = 80;
/// Bytes of a request that are read before answering; a longer request head
/// is answered all the same once this much has arrived.
pub const MAX_REQUEST: usize = 1024;
/// A client that sends nothing for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sockets listening on [`PORT`] at once. smoltcp answers a SYN for which no
/// socket listens with a reset, so with a single socket a client that
/// connects while the previous connection is being closed is refused; a few
/// listeners keep one free. The board's `app::SOCKETS` must leave room.
pub const LISTENERS: usize = 4;
/// Socket buffer sizes.
const RX_BUF: usize = 1024;
const TX_BUF: usize = 1024;

/// Serves forever. `board` names the board in the response body.
pub async fn serve(stack: Stack<'static>, board: &'static str) -> ! {
    info!("placeholder app: HTTP on port {} ({} listeners)", PORT, LISTENERS);
    let listeners: [_; LISTENERS] = core::array::from_fn(|id| listener(stack, board, id));
    embassy_futures::join::join_array(listeners).await;
    // join_array of never-ending futures never returns.
    loop {
        Timer::after_secs(3600).await;
    }
}

/// One listening socket, reused connection after connection.
async fn listener(stack: Stack<'static>, board: &'static str, id: usize) {
    let mut rx = [0u8; RX_BUF];
    let mut tx = [0u8; TX_BUF];
    let mut served: u32 = 0;
    loop {
        let mut socket = TcpSocket::new(stack, &mut rx, &mut tx);
        socket.set_timeout(Some(IDLE_TIMEOUT));
        if let Err(e) = socket.accept(PORT).await {
            warn!("listener {}: accept: {:?}", id, e);
            continue;
        }
        let peer = socket.remote_endpoint();
        match answer(&mut socket, board).await {
            Ok(()) => {
                served = served.wrapping_add(1);
                info!("listener {}: answered {:?} (200 OK, #{})", id, peer, served);
            }
            Err(e) => warn!("listener {}: {:?}: {:?}", id, peer, e),
        }
        // Let the FIN exchange finish before the socket goes away (dropping an
        // open socket resets the connection); bounded by the socket timeout.
        socket.close();
        let mut sink = [0u8; 64];
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
}

async fn answer(socket: &mut TcpSocket<'_>, board: &str) -> Result<(), embassy_net::tcp::Error> {
    // Read until the end of the request head (or MAX_REQUEST bytes, or EOF).
    let mut head = [0u8; MAX_REQUEST];
    let mut len = 0;
    while len < head.len() {
        let n = socket.read(&mut head[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let mut body = Line::<96>::new();
    body.push(b"holdfast gateway placeholder on ");
    body.push(board.as_bytes());
    body.push(b"\n");
    let mut head_out = Line::<160>::new();
    head_out.push(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ");
    head_out.push_decimal(body.len());
    head_out.push(b"\r\n\r\n");
    socket.write_all(head_out.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.flush().await
}

/// A tiny fixed-capacity byte buffer (no alloc); input past the capacity is
/// cut off.
struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
    fn push_decimal(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
