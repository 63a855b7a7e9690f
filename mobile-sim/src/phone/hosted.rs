//! Phones on the host runtime (`--engine host-runtime`, the default for ws:// targets and
//! holdfast's protocol): the host gateway's own one-thread runtime (the `host-runtime` crate:
//! embassy's executor, a timing wheel, sockets registered once in edge-triggered epoll) on a
//! thread of the process, and a WebSocket client of a few lines instead of tokio-tungstenite.
//!
//! Why (issue #17): at a million phones the load generator cost more CPU per phone byte than the
//! gateway it loads. Its profile on tokio: 47 % kernel, then tokio's timer wheel (a lock and an
//! entry per phone's sleep, 8.6 %), waker registration in tokio-tungstenite's stream (4.7 %),
//! malloc (4 %). Here a phone's task connects it (its timer an entry in its task header) and a
//! connection, once up, is held by the [`Holder`]: one loop over a dense table of 64-byte slots,
//! with the phones' sockets in a socket set of its own. A byte is one 7-byte `write` of a frame
//! built on the stack, an answer is one `read` onto the stack, and the thread sleeps once per
//! `--io-batch-us` window while answers keep coming.
//!
//! Everything else is the tokio engine's: the plan, the ramp, the permits for attempts in flight
//! and the run's phase (tokio's `Semaphore` and `Notify` work from any executor: a phase change
//! on the control thread wakes these tasks through the runtime's eventfd), the counters, and the
//! upgrade ([`crate::net::upgrade_request`]).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_futures::select::{select, Either};
use embassy_time::{with_timeout, Timer};
use embedded_io_async::{Read, Write};
use host_runtime::net::{Stack, TcpSocket};
use host_runtime::tasks::TaskPool;
use host_runtime::RuntimeConfig;
use trunk::backoff::Backoff;

use super::{left_run, Durable, Phase, Shared};
use holder::Holder;

use crate::net::{upgrade_answer, upgrade_request, Failure, FailureKind, Target};

/// Bytes a phone keeps for what the server sends: `{"durable":N}` frames are about 20 bytes,
/// and a control frame at most 127. A data frame larger than this is skipped unread.
const READ_BUFFER: usize = 128;
/// How long a phone closing waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

mod holder;

/// Starts a thread that runs this process's phones on the host runtime, for the life of the
/// process (a runtime runs once per process): a task per phone that connects it, and one
/// [`Holder`] that serves every held connection.
pub fn spawn(shared: Arc<Shared>) -> anyhow::Result<()> {
    let config = RuntimeConfig { io_batch_us: shared.plan.io_batch_us };
    std::thread::Builder::new().name("phones".into()).spawn(move || {
        // The phones' tasks live as long as the process: so does what they share.
        let shared: &'static Shared = Box::leak(Box::new(shared));
        let phones = shared.devices.len();
        let outcome = host_runtime::run(config, |spawner| {
            let holder: &'static Holder = match Holder::new(shared) {
                Ok(holder) => Box::leak(Box::new(holder)),
                Err(e) => {
                    eprintln!("error: the held phones' socket set: {e}");
                    std::process::exit(2);
                }
            };
            let loop_pool: &'static TaskPool<_> = Box::leak(Box::new(TaskPool::new(1)));
            match loop_pool.spawn(move || holder.run()) {
                Ok(token) => spawner.spawn(token),
                Err(e) => tracing::error!("the held phones' loop: no task: {e:?}"),
            }
            let pool: &'static TaskPool<_> = Box::leak(Box::new(TaskPool::new(phones)));
            for k in 0..phones {
                match pool.spawn(move || phone(shared, holder, k)) {
                    Ok(token) => spawner.spawn(token),
                    Err(e) => tracing::error!("phone {k}: no task: {e:?}"),
                }
            }
        });
        // It returns only if it failed (its eventfd or epoll could not be made).
        let Err(e) = outcome;
        eprintln!("error: the phones' runtime: {e}");
        std::process::exit(2);
    })?;
    Ok(())
}

/// `at` on the runtime's clock.
fn at(at: Instant) -> embassy_time::Instant {
    embassy_time::Instant::from_micros(host_runtime::time::us_at(at))
}

fn after(d: Duration) -> embassy_time::Duration {
    embassy_time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A phone's whole life (as the tokio engine's `phone`); the holder holds its connections.
async fn phone(shared: &'static Shared, holder: &'static Holder, k: usize) {
    let mut failing = false;
    live(shared, holder, k, &mut failing).await;
    shared.finished(failing);
}

async fn live(shared: &'static Shared, holder: &Holder, k: usize, failing: &mut bool) {
    let index = shared.index(k);
    let mut progress = shared.starting();
    if shared.plan.rate > 0.0 {
        let start = shared.start + Duration::from_secs_f64(index as f64 / shared.plan.rate);
        if !sleep_while_running(shared, start).await {
            return;
        }
    }
    let mut failures = 0u32;
    loop {
        // As the tokio engine: the permit first, then the attempt boxed (its state lives only
        // while connecting).
        let conn = {
            let permit = match select(shared.permits.acquire(), left_run(shared)).await {
                Either::First(Ok(permit)) => permit,
                _ => return,
            };
            let attempt = Box::pin(attempt(shared, index, permit));
            match select(attempt, left_run(shared)).await {
                Either::First(conn) => conn,
                Either::Second(()) => return,
            }
        };
        match conn {
            None => failures = shared.attempt_failed(failing, failures),
            Some(conn) => {
                shared.connection_up(failing);
                let (ended, conn) = holder.hold(k, conn, &mut progress).await;
                match shared.connection_down(index, ended) {
                    None => {
                        if let Some(conn) = conn {
                            Box::pin(conn.close()).await;
                        }
                        return;
                    }
                    Some(after_loss) => failures = after_loss,
                }
            }
        }
        let delay = Backoff::PHONE.delay(failures, rand::random());
        if !sleep_while_running(shared, Instant::now() + Duration::from(delay)).await {
            return;
        }
    }
}

/// Sleeps until `until`; `false` (early) when the run is no longer in its Run phase.
async fn sleep_while_running(shared: &Shared, until: Instant) -> bool {
    match select(Timer::at(at(until)), left_run(shared)).await {
        Either::First(()) => matches!(shared.phase.get(), Phase::Run),
        Either::Second(()) => false,
    }
}

/// One connection attempt, counted: TCP from the phone's source address, the upgrade, within
/// `--connect-timeout`.
async fn attempt(
    shared: &Shared,
    index: u64,
    _permit: tokio::sync::SemaphorePermit<'_>,
) -> Option<Box<Connection>> {
    shared.stats.attempts.fetch_add(1, Relaxed);
    let plan = &shared.plan;
    let started = Instant::now();
    let opened = match with_timeout(
        after(plan.common.connect_timeout),
        open(plan.target(index), &plan.url(index), plan.source(index)),
    )
    .await
    {
        Ok(opened) => opened,
        Err(_) => Err(Failure::new(FailureKind::Timeout, "connection attempt timed out")),
    };
    shared.attempted(index, opened.map(|conn| (Box::new(conn), started.elapsed())))
}

async fn open(target: &Target, url: &str, source: Option<IpAddr>) -> Result<Connection, Failure> {
    let mut socket = Stack.connect_from(source, target.addr).await.map_err(Failure::io)?;
    let (request, mut parser) = upgrade_request(url, None)?;
    socket.write_all(&request).await.map_err(Failure::io)?;
    drop(request);
    let mut chunk = [0u8; 512];
    loop {
        let n = socket.read(&mut chunk).await.map_err(Failure::io)?;
        if let Some(consumed) = upgrade_answer(&mut parser, &chunk[..n])? {
            // Frames that came with the answer stay for the phone to read.
            let mut conn = Connection { socket, frames: Frames::default() };
            conn.frames.take(&chunk[consumed..n])?;
            return Ok(conn);
        }
    }
}

const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// A phone's WebSocket: its socket and what it has read but not yet taken as frames.
struct Connection {
    socket: TcpSocket,
    frames: Frames,
}

impl Connection {
    /// Sends one frame, masked as a client's must be (RFC 6455 section 5.3); `payload` at most
    /// 125 bytes (a pong, a close code).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = [0u8; 6 + 125];
        let len = mask_frame(&mut frame, opcode, payload);
        self.socket.write_all(&frame[..len]).await
    }

    /// Closes with 1000 and waits (briefly) for the server's close or end of stream.
    async fn close(mut self: Box<Self>) {
        let _ = with_timeout(after(CLOSE_WAIT), async {
            if self.send(OPCODE_CLOSE, &1000u16.to_be_bytes()).await.is_err() {
                return;
            }
            loop {
                match self.frames.next() {
                    Ok(Some(Frame::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                }
                let Connection { socket, frames } = &mut *self;
                match socket.read(frames.room()).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => frames.filled(n),
                }
            }
        })
        .await;
    }
}

/// Builds a client's frame of `payload` (at most 125 bytes), masked as RFC 6455 section 5.3
/// asks, in `frame`; returns its length.
fn mask_frame(frame: &mut [u8; 6 + 125], opcode: u8, payload: &[u8]) -> usize {
    debug_assert!(payload.len() <= 125);
    let payload = &payload[..payload.len().min(125)];
    let mask: [u8; 4] = rand::random();
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | payload.len() as u8;
    frame[2..6].copy_from_slice(&mask);
    for (i, (out, b)) in frame[6..].iter_mut().zip(payload).enumerate() {
        *out = b ^ mask[i % 4];
    }
    6 + payload.len()
}

/// What a server's frame means to a phone.
#[derive(Debug, PartialEq)]
enum Frame {
    /// `{"durable":N}`: the connection's bytes durable so far.
    Durable(u64),
    /// Answer with a pong carrying the same payload (at most 125 bytes).
    Ping(Vec<u8>),
    /// The server closed (code and reason, as the failure's detail).
    Close(Failure),
    /// Anything else (other messages, pongs, fragments): read and let go.
    Other,
}

/// The server's frames as they arrive: a fixed buffer, and the rest of a frame too large for it
/// that is being skipped.
#[derive(Debug)]
struct Frames {
    buf: [u8; READ_BUFFER],
    len: usize,
    /// Payload bytes still to skip of a data frame larger than the buffer.
    skip: u64,
}

impl Default for Frames {
    fn default() -> Self {
        Self { buf: [0; READ_BUFFER], len: 0, skip: 0 }
    }
}

impl Frames {
    /// Where the next read goes. Never empty: a frame that would not fit is skipped, so a full
    /// buffer always holds a whole frame, which [`Frames::next`] takes first.
    fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Whether part of a frame is here, or still to skip.
    fn pending(&self) -> bool {
        self.len > 0 || self.skip > 0
    }

    /// `n` bytes were read into [`Frames::room`].
    fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(READ_BUFFER);
    }

    /// Bytes that arrived otherwise (with the upgrade's answer).
    fn take(&mut self, data: &[u8]) -> Result<(), Failure> {
        for chunk in data.chunks(READ_BUFFER) {
            let room = self.room();
            if room.len() < chunk.len() {
                return Err(Failure::new(FailureKind::Protocol, "too much sent with the upgrade's answer"));
            }
            room[..chunk.len()].copy_from_slice(chunk);
            self.filled(chunk.len());
            // Take the frames out so the next chunk has room (only their meaning is lost here:
            // a server does not answer before a phone sent).
            while self.next()?.is_some() {}
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// The next whole frame in the buffer, if one is there.
    fn next(&mut self) -> Result<Option<Frame>, Failure> {
        loop {
            if self.skip > 0 {
                let n = self.len.min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.consume(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let [b0, b1, ..] = self.buf[..self.len] else { return Ok(None) };
            if b1 & 0x80 != 0 {
                return Err(protocol("a masked frame from the server"));
            }
            let (header, len) = match b1 & 0x7f {
                126 if self.len >= 4 => (4, u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]]))),
                127 if self.len >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    (10, u64::from_be_bytes(b))
                }
                126 | 127 => return Ok(None),
                n => (2, u64::from(n)),
            };
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
            let total = header as u64 + len;
            if total > READ_BUFFER as u64 {
                if opcode >= OPCODE_CLOSE {
                    return Err(protocol("a control frame longer than 125 bytes"));
                }
                // Too large to be an answer a phone acts on: skipped.
                self.consume(header);
                self.skip = len;
                continue;
            }
            let total = total as usize;
            if self.len < total {
                return Ok(None);
            }
            let payload = &self.buf[header..total];
            let frame = match opcode {
                0x1 if fin => match serde_json::from_slice::<Durable>(payload) {
                    Ok(Durable { durable }) => Frame::Durable(durable),
                    Err(_) => Frame::Other,
                },
                OPCODE_PING => Frame::Ping(payload.to_vec()),
                OPCODE_CLOSE => Frame::Close(closed_by_server(payload)),
                _ => Frame::Other,
            };
            self.consume(total);
            return Ok(Some(frame));
        }
    }
}

fn protocol(why: &str) -> Failure {
    Failure::new(FailureKind::Protocol, why)
}

/// A close frame's code and reason, as the tokio engine words them.
fn closed_by_server(payload: &[u8]) -> Failure {
    let detail = match payload {
        [a, b, reason @ ..] => {
            format!("close {} {}", u16::from_be_bytes([*a, *b]), String::from_utf8_lossy(reason))
        }
        _ => "close without code".into(),
    };
    Failure::new(FailureKind::ClosedByServer, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phone is its task: embassy's header (with the timer's entry) and the phone's future,
    /// allocated once for the phone's life; the attempt is boxed and freed once connected. While
    /// held, the task only waits for the holder (which keeps a 64-byte slot per phone). A change
    /// that makes it larger costs that much per phone (`RUSTC_BOOTSTRAP=1 cargo rustc -p
    /// mobile-sim -- -Zprint-type-sizes` shows what is kept across awaits).
    #[test]
    fn a_phone_stays_small() {
        fn task_size<F: core::future::Future + 'static>(
            _: fn(&'static Shared, &'static Holder, usize) -> F,
        ) -> usize {
            core::mem::size_of::<embassy_executor::raw::TaskStorage<F>>()
        }
        let size = task_size(phone);
        assert!(size <= 544, "a phone's task grew to {size} bytes");
        assert_eq!(core::mem::size_of::<holder::Slot>(), 64, "a held phone's slot is one cache line");
    }

    fn frames(bytes: &[u8]) -> Frames {
        let mut f = Frames::default();
        f.room()[..bytes.len()].copy_from_slice(bytes);
        f.filled(bytes.len());
        f
    }

    #[test]
    fn answers_split_anywhere_are_read_whole() {
        let text = br#"{"durable":42}"#;
        let mut wire = vec![0x81, text.len() as u8];
        wire.extend_from_slice(text);
        wire.extend_from_slice(&wire.clone());
        for cut in 0..wire.len() {
            let mut f = frames(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(frame) = f.next().unwrap() {
                got.push(frame);
            }
            f.room()[..wire.len() - cut].copy_from_slice(&wire[cut..]);
            f.filled(wire.len() - cut);
            while let Some(frame) = f.next().unwrap() {
                got.push(frame);
            }
            assert_eq!(got, vec![Frame::Durable(42), Frame::Durable(42)], "cut at {cut}");
        }
    }

    #[test]
    fn a_frame_larger_than_the_buffer_is_skipped_and_the_next_one_read() {
        let mut wire = vec![0x81, 126, 0x01, 0x00]; // 256 bytes of text
        wire.extend(std::iter::repeat_n(b'x', 256));
        wire.extend_from_slice(&[0x81, 14]);
        wire.extend_from_slice(br#"{"durable":7} "#);
        let mut f = Frames::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(50) {
            f.room()[..chunk.len()].copy_from_slice(chunk);
            f.filled(chunk.len());
            while let Some(frame) = f.next().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![Frame::Durable(7)]);
    }

    #[test]
    fn pings_closes_and_bad_frames() {
        let mut f = frames(&[0x89, 2, b'h', b'i', 0x88, 4, 0x03, 0xE9, b'b', b'y']);
        assert_eq!(f.next().unwrap(), Some(Frame::Ping(b"hi".to_vec())));
        let Some(Frame::Close(failure)) = f.next().unwrap() else { panic!("a close") };
        assert_eq!(
            failure.to_string(),
            Failure::new(FailureKind::ClosedByServer, "close 1001 by").to_string()
        );
        assert!(frames(&[0x81, 0x85, 0, 0, 0, 0, b'x']).next().is_err(), "servers do not mask");
        assert!(frames(&[0x89, 126, 0, 200]).next().is_err(), "control frames are short");
        assert_eq!(frames(&[0x82, 1, b'.']).next().unwrap(), Some(Frame::Other));
    }
}
