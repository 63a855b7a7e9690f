//! TLS over rustls's unbuffered API that holds no buffers while a connection is idle, for both
//! ends: mobile-sim's phones (client), the host gateway's phone listener and the aggregator's
//! listener (servers).
//!
//! rustls's buffered connections (`ClientConnection`, `ServerConnection`, and tokio-rustls over
//! them) keep a receive buffer of at least 4 KiB for the whole life of a connection, plus their
//! outgoing queues. A phone receives and sends a few dozen bytes a minute, so for a held phone
//! that buffer is most of what TLS costs (8.2 KiB per idle phone at the host gateway with the
//! buffered server, 4.2 KiB with this, `docs/benchmarks.md`). Here the caller's [`LeanTls`] owns
//! the three buffers (received TLS bytes, TLS bytes to send, decrypted bytes), each a `Vec`
//! released as soon as it is empty: an idle connection keeps only rustls's own state (keys, the
//! handshake's outcome) and its socket. The handshake needs its larger buffers only while it runs.
//!
//! This crate does no I/O (sans-I/O): it says what to send ([`LeanTls::unsent`]), lends a buffer
//! to read into ([`LeanTls::fill`]) and processes what was read ([`LeanTls::process`]). Each user
//! drives it from its own I/O: tokio in mobile-sim and the aggregator (the one adapter for both,
//! [`tokio_io::LeanTlsStream`], feature `tokio`), the gateway's epoll reactor in `firmware/host`.
//!
//! Order is kept as TLS requires: bytes rustls encoded (handshake, alerts, tickets) and encrypted
//! application data all go out through one queue, written before anything newer.
//!
//! rustls removed this API on its main branch (rustls PR 2905, February 2026) in favour of its
//! connection types taking caller-owned input buffers (`TlsInputBuffer`, PR 2940). rustls 0.23
//! keeps it, and the workspace pins `rustls = "0.23"`. Moving to the next rustls is a change to
//! this crate only ([`Unbuffered`] and `LeanTls::run`): the buffer policy (owned here,
//! released when empty, bounded by [`MAX_RECORD`]) stays, its users do not change.

use std::fmt;
use std::io;

pub mod pinned;
#[cfg(feature = "tokio")]
pub mod tokio_io;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// Bytes read from the socket at least at a time: a phone's message is a record of a few dozen
/// bytes, a TLS 1.3 handshake flight one to three records of a few hundred to 2 KiB, so one read
/// of this size takes most records whole, and a larger record is read to its end in one more.
pub const READ_CHUNK: usize = 1024;
/// A TLS record's header: content type, version, length.
pub const RECORD_HEADER: usize = 5;
/// The largest TLS 1.3 record a peer may send (RFC 8446 5.2: 2^14 bytes of plaintext plus at
/// most 256 of expansion, after the header). A header announcing more is refused at once (the
/// RFC's record_overflow), before any buffer is grown for it: what one connection can make this
/// side hold is bounded by this, for as long as its handshake or read timeout lets it.
pub const MAX_RECORD: usize = RECORD_HEADER + 16_384 + 256;
/// The most received bytes held at once. Usually less than a record: rustls processes every
/// complete record at once, except a handshake message split over several records, which it
/// reassembles in the receive buffer; rustls refuses one over 64 KiB, which fits in 5 records.
pub const MAX_INCOMING: usize = 5 * MAX_RECORD;
/// What an encrypted record adds to its plaintext at most here (header, AEAD tag, content type),
/// a first guess for the send queue's growth; rustls says when it needs more.
const RECORD_OVERHEAD: usize = 64;
/// A first guess for one encoded handshake message; rustls says when it needs more.
const ENCODE_GUESS: usize = 256;

/// A rustls unbuffered connection, client or server: rustls gives each its own
/// `process_tls_records`, this names the one used here for both.
pub trait Unbuffered {
    /// rustls's per-side data (`ClientConnectionData`, `ServerConnectionData`).
    type Data;
    /// Processes the TLS records at the front of `incoming` until rustls has something to say.
    fn process_tls_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process_tls_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        (**self).process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process_tls_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        (**self).process_tls_records(incoming)
    }
}

/// Where the connection stands after processing what was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// Application data may flow; more may be read from the peer.
    Established,
    /// The peer closed (close_notify, or its socket ended).
    Closed,
}

/// A TLS connection's state and the buffers this side owns for it (see the crate's doc).
pub struct LeanTls<C> {
    conn: C,
    /// Received TLS bytes not yet processed (a record begun): empty, and released, otherwise.
    incoming: Vec<u8>,
    /// TLS bytes to send; the first `out_sent` of them are written.
    outgoing: Vec<u8>,
    out_sent: usize,
    /// Decrypted bytes; the first `plain_read` of them were read.
    plaintext: Vec<u8>,
    plain_read: usize,
    /// The handshake finished (application data may be sent).
    established: bool,
    /// The peer closed (close_notify, or the socket ended).
    peer_closed: bool,
    /// Our close_notify is queued (or cannot be sent any more).
    close_queued: bool,
    /// rustls returned an error: it is never called again (its state is broken, and processing
    /// input again would have it queue a second fatal alert, which it asserts against).
    failed: bool,
}

impl<C> fmt::Debug for LeanTls<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanTls")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.out_sent))
            .field("plaintext", &(self.plaintext.len() - self.plain_read))
            .field("established", &self.established)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// rustls's error (or ours) as an I/O error: the peer broke TLS, or its certificate was refused.
pub fn tls_error<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<C: Unbuffered> LeanTls<C> {
    /// A connection with no buffers yet; a client's first [`process`](Self::process) queues its
    /// ClientHello, a server waits for the peer's.
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            out_sent: 0,
            plaintext: Vec::new(),
            plain_read: 0,
            established: false,
            peer_closed: false,
            close_queued: false,
            failed: false,
        }
    }

    /// rustls's connection (its negotiated version, the peer's name or certificates, ...).
    pub fn conn(&self) -> &C {
        &self.conn
    }

    /// The handshake is not finished yet.
    pub fn is_handshaking(&self) -> bool {
        !self.established
    }

    /// The peer will send nothing more (close_notify, or its socket ended).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The peer's socket ended: nothing more will come, a record begun will never end.
    pub fn set_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// The bytes the three buffers hold now (their capacity): 0 for an idle connection.
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }

    /// Processes the received bytes: decrypted data goes to the plaintext buffer, whatever rustls
    /// has to send (handshake, tickets, alerts) to the send queue. Releases the receive buffer
    /// once it holds no record begun.
    ///
    /// An error is final (rustls's state is broken): the alert rustls queued for it, if any, is
    /// in the send queue, for the caller to send on its way out.
    pub fn process(&mut self) -> io::Result<Progress> {
        let result = self.process_records();
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        let progress = result?;
        if progress == Progress::Established {
            self.established = true;
        }
        Ok(if self.peer_closed && progress == Progress::Established { Progress::Closed } else { progress })
    }

    fn process_records(&mut self) -> io::Result<Progress> {
        self.run(None::<fn(&mut WriteTraffic<'_, C::Data>, &mut Vec<u8>) -> io::Result<()>>)
    }

    /// Runs rustls's state machine over the receive buffer until it needs more input
    /// (`Handshaking`), can send (`Established`, after running `write` if given) or is closed:
    /// decrypted data goes to the plaintext buffer, records rustls encodes to the send queue.
    fn run<W>(&mut self, mut write: Option<W>) -> io::Result<Progress>
    where
        W: FnOnce(&mut WriteTraffic<'_, C::Data>, &mut Vec<u8>) -> io::Result<()>,
    {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS connection failed earlier"));
        }
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let (outgoing, plaintext, peer_closed) =
                (&mut self.outgoing, &mut self.plaintext, &mut self.peer_closed);
            let step = (|| {
                Ok(match state.map_err(tls_error)? {
                    ConnectionState::ReadTraffic(mut traffic) => {
                        while let Some(record) = traffic.next_record() {
                            plaintext.extend_from_slice(record.map_err(tls_error)?.payload);
                        }
                        None
                    }
                    ConnectionState::EncodeTlsData(mut encode) => {
                        encode_into(&mut encode, outgoing)?;
                        None
                    }
                    // The encoded bytes are queued in order ahead of anything sent later; the
                    // queue is written before any new data.
                    ConnectionState::TransmitTlsData(transmit) => {
                        transmit.done();
                        None
                    }
                    ConnectionState::BlockedHandshake => Some(Progress::Handshaking),
                    ConnectionState::WriteTraffic(mut traffic) => {
                        if let Some(write) = write.take() {
                            write(&mut traffic, outgoing)?;
                        }
                        Some(Progress::Established)
                    }
                    ConnectionState::PeerClosed => {
                        *peer_closed = true;
                        None
                    }
                    ConnectionState::Closed => Some(Progress::Closed),
                    // Early data (0-RTT) is off (rustls's default, `max_early_data_size` 0): a
                    // state this code does not know is the peer's doing, refused, never a panic.
                    _ => return Err(tls_error("unexpected TLS state")),
                })
            })();
            // Applied on an error too: rustls keeps offsets into this buffer (a handshake
            // message split over records) that hold only once its discard is done.
            self.incoming.drain(..discard.min(self.incoming.len()));
            match step {
                Ok(Some(progress)) => return Ok(progress),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// After an error: rustls queued its fatal alert (if any) for the peer, and yields it before
    /// looking at input again; this takes it into the send queue, then releases the receive
    /// buffer. rustls is called once, with the buffer as it is: an empty one in its place could
    /// break offsets rustls holds into it (an index out of range), and a second call could have
    /// it process input again and queue a second fatal alert (a debug assertion in rustls).
    fn queue_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = encode_into(&mut encode, &mut self.outgoing);
        }
        self.incoming = Vec::new();
    }

    /// Encrypts `data` into the send queue (the handshake must be done).
    pub fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.with_write_traffic(|traffic, outgoing| {
            let mut need = data.len() + RECORD_OVERHEAD;
            loop {
                let start = outgoing.len();
                match traffic.encrypt(data, spare(outgoing, need)) {
                    Ok(n) => {
                        outgoing.truncate(start + n);
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(e)) => {
                        outgoing.truncate(start);
                        need = e.required_size;
                    }
                    Err(e) => {
                        outgoing.truncate(start);
                        return Err(tls_error(e));
                    }
                }
            }
        })
    }

    /// Queues close_notify, once; nothing if the handshake never finished or the connection is
    /// already broken (the socket's close tells the peer then).
    pub fn queue_close_notify(&mut self) {
        if self.close_queued || !self.established {
            return;
        }
        self.close_queued = true;
        let _ = self.with_write_traffic(|traffic, outgoing| {
            let start = outgoing.len();
            match traffic.queue_close_notify(spare(outgoing, RECORD_OVERHEAD)) {
                Ok(n) => outgoing.truncate(start + n),
                Err(_) => outgoing.truncate(start),
            }
            Ok(())
        });
    }

    /// Brings rustls to its `WriteTraffic` state (handling what comes before it: data received,
    /// records to encode) and runs `write` in it.
    fn with_write_traffic(
        &mut self,
        write: impl FnOnce(&mut WriteTraffic<'_, C::Data>, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let progress = self.run(Some(write));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        match progress? {
            Progress::Established => Ok(()),
            Progress::Handshaking => {
                Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake not done"))
            }
            Progress::Closed => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    /// Copies decrypted bytes into `buf`: how many (0 when there are none). Releases the
    /// plaintext buffer once it is read.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let available = self.plaintext();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume_plaintext(n);
        n
    }

    /// The decrypted bytes not read yet.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext[self.plain_read..]
    }

    /// `n` bytes of [`plaintext`](Self::plaintext) were read; the buffer is released once all are.
    pub fn consume_plaintext(&mut self, n: usize) {
        self.plain_read = (self.plain_read + n).min(self.plaintext.len());
        if self.plain_read == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_read = 0;
        }
    }

    /// Decrypted bytes are waiting to be read.
    pub fn has_plaintext(&self) -> bool {
        self.plain_read < self.plaintext.len()
    }

    /// Reads more TLS bytes with `read`, which is lent the receive buffer's free space (at least
    /// [`READ_CHUNK`] bytes, or the rest of the record begun) and returns how many bytes it put
    /// there with its own result. The buffer keeps only what was read (released if nothing is).
    ///
    /// Refuses a record whose header announces more than [`MAX_RECORD`], before growing for it,
    /// and more than [`MAX_INCOMING`] bytes held in all.
    /// [`process`](Self::process) the bytes read before filling again.
    pub fn fill<T>(&mut self, read: impl FnOnce(&mut [u8]) -> (usize, T)) -> io::Result<T> {
        let len = self.incoming.len();
        let record_rest = match self.incoming.get(..RECORD_HEADER) {
            Some(&[_, _, _, hi, lo]) => {
                let record = RECORD_HEADER + usize::from(u16::from_be_bytes([hi, lo]));
                if record > MAX_RECORD {
                    return Err(tls_error(rustls::Error::InvalidMessage(
                        rustls::InvalidMessage::MessageTooLarge,
                    )));
                }
                record.saturating_sub(len)
            }
            _ => 0,
        };
        let want = record_rest.max(READ_CHUNK);
        if len + want > MAX_INCOMING {
            return Err(tls_error("more TLS bytes held than a handshake message needs"));
        }
        self.incoming.resize(len + want, 0);
        let (n, result) = read(&mut self.incoming[len..]);
        self.incoming.truncate(len + n.min(want));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        Ok(result)
    }

    /// The queued TLS bytes not sent yet (empty: nothing to send).
    pub fn unsent(&self) -> &[u8] {
        &self.outgoing[self.out_sent..]
    }

    /// `n` bytes of [`unsent`](Self::unsent) were sent; the queue is released once all are.
    pub fn sent(&mut self, n: usize) {
        self.out_sent = (self.out_sent + n).min(self.outgoing.len());
        if self.out_sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_sent = 0;
        }
    }
}

/// Encodes a handshake record (or an alert) into the send queue.
fn encode_into<D>(encode: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let mut need = ENCODE_GUESS;
    loop {
        match encode.encode(spare(out, need)) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => {
                out.truncate(start);
                need = e.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(tls_error(e));
            }
        }
    }
}

/// `buf` grown by `extra` zeroed bytes (at least what its capacity already allows), for rustls to
/// write into; the caller truncates to what was written.
fn spare(buf: &mut Vec<u8>, extra: usize) -> &mut [u8] {
    let start = buf.len();
    let room = (buf.capacity() - start).max(extra);
    buf.resize(start + room, 0);
    &mut buf[start..]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ServerConfig};

    use super::*;

    fn pki() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        testkit::pki::TestCa::new("lean-tls").rustls_configs(&["localhost"])
    }

    type Client = LeanTls<UnbufferedClientConnection>;
    type Server = LeanTls<UnbufferedServerConnection>;

    /// Moves what `from` has to send into `to`'s receive buffer, in reads of at most `chunk`
    /// bytes (as a socket would hand them over), processing after each; `to`'s last progress.
    fn deliver<A: Unbuffered, B: Unbuffered>(
        from: &mut LeanTls<A>,
        to: &mut LeanTls<B>,
        chunk: usize,
    ) -> io::Result<Progress> {
        let mut progress = to.process()?;
        while !from.unsent().is_empty() {
            let bytes = from.unsent().to_vec();
            let taken = to.fill(|space| {
                let n = space.len().min(bytes.len()).min(chunk);
                space[..n].copy_from_slice(&bytes[..n]);
                (n, n)
            })?;
            from.sent(taken);
            progress = to.process()?;
        }
        Ok(progress)
    }

    fn connected(chunk: usize) -> (Client, Server) {
        let (client, server) = pki();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = LeanTls::new(UnbufferedClientConnection::new(client, name).unwrap());
        let mut s = LeanTls::new(UnbufferedServerConnection::new(server).unwrap());
        assert_eq!(c.process().unwrap(), Progress::Handshaking);
        for _ in 0..4 {
            let server_side = deliver(&mut c, &mut s, chunk).unwrap();
            let client_side = deliver(&mut s, &mut c, chunk).unwrap();
            if server_side == Progress::Established && client_side == Progress::Established {
                return (c, s);
            }
        }
        panic!("no handshake in 4 round trips: client {c:?}, server {s:?}");
    }

    /// The promise: once the handshake is done and what was received is read, neither side
    /// holds a buffer; a phone's small message in each direction leaves none behind either.
    #[test]
    fn an_idle_connection_holds_no_buffers_on_either_side() {
        for chunk in [1, 7, 100, usize::MAX] {
            let (mut c, mut s) = connected(chunk);
            assert_eq!((c.buffered(), s.buffered()), (0, 0), "after the handshake, read {chunk} at a time");
            assert!(!s.is_handshaking() && !c.is_handshaking());

            c.encrypt(b"a phone's message").unwrap();
            deliver(&mut c, &mut s, chunk).unwrap();
            let mut got = [0u8; 64];
            let n = s.read_plaintext(&mut got[..5]);
            let m = s.read_plaintext(&mut got[5..]);
            assert_eq!(&got[..n + m], b"a phone's message");
            assert_eq!(s.buffered(), 0, "the server, after reading it ({chunk} at a time)");

            s.encrypt(&[7u8; 40_000]).unwrap(); // several records
            deliver(&mut s, &mut c, chunk).unwrap();
            assert_eq!(c.plaintext(), &[7u8; 40_000][..]);
            c.consume_plaintext(40_000);
            assert_eq!((c.buffered(), s.buffered()), (0, 0), "after 40,000 bytes ({chunk} at a time)");

            c.queue_close_notify();
            assert_eq!(deliver(&mut c, &mut s, chunk).unwrap(), Progress::Closed);
            assert!(s.peer_closed());
        }
    }

    /// What a phone sends before the handshake ends is read as soon as it ends.
    #[test]
    fn data_sent_with_the_clients_finished_is_read() {
        let (mut c, mut s) = connected(usize::MAX);
        c.encrypt(b"GET /ws").unwrap();
        c.encrypt(b" HTTP/1.1").unwrap();
        deliver(&mut c, &mut s, usize::MAX).unwrap();
        assert_eq!(s.plaintext(), b"GET /ws HTTP/1.1");
    }

    fn server() -> Server {
        LeanTls::new(UnbufferedServerConnection::new(pki().1).unwrap())
    }

    fn feed(s: &mut Server, bytes: &[u8]) -> io::Result<Progress> {
        let mut rest = bytes;
        loop {
            let n = s.fill(|space| {
                let n = space.len().min(rest.len());
                space[..n].copy_from_slice(&rest[..n]);
                (n, n)
            })?;
            rest = &rest[n..];
            let progress = s.process()?;
            if rest.is_empty() {
                return Ok(progress);
            }
        }
    }

    /// Not TLS (a plain HTTP request to the TLS port): refused, with an alert for the peer.
    #[test]
    fn garbage_is_refused_with_an_alert() {
        let mut s = server();
        let err = feed(&mut s, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(s.unsent().first(), Some(&0x15), "an alert record queued: {:x?}", s.unsent());
        assert!(s.buffered() <= ENCODE_GUESS, "only the alert held: {} B", s.buffered());
        // Used again after its error (the gateway closes it): errors, never a panic.
        assert_eq!(s.process().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(s.encrypt(b"x").is_err());
        s.queue_close_notify();
    }

    /// A header announcing a record longer than TLS 1.3 allows is refused before the receive
    /// buffer grows for it. 16,896 bytes: over TLS 1.3's bound, under the 18,432 rustls's framing
    /// takes (it would wait for the whole record), so the refusal is this crate's.
    #[test]
    fn an_oversized_record_is_refused_before_it_is_buffered() {
        let mut s = server();
        let header = [0x16, 0x03, 0x01, 0x42, 0x00];
        assert_eq!(feed(&mut s, &header).unwrap(), Progress::Handshaking, "rustls waits for the record");
        let refused = s.fill(|_| (0, ())).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        assert!(s.buffered() < 2 * READ_CHUNK, "{} B held", s.buffered());
        // Just under the bound, the record is read.
        let mut s = server();
        let header = [0x16, 0x03, 0x01, 0x41, 0x00];
        assert_eq!(feed(&mut s, &header).unwrap(), Progress::Handshaking);
        assert!(s.fill(|_| (0, ())).is_ok());
    }

    /// A handshake cut anywhere, or with any byte changed, is refused or waits for more: never a
    /// panic, never more held than [`MAX_INCOMING`].
    #[test]
    fn a_broken_client_hello_never_panics() {
        let (client, _) = pki();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = LeanTls::new(UnbufferedClientConnection::new(client, name).unwrap());
        c.process().unwrap();
        let hello = c.unsent().to_vec();
        assert!(hello.len() > 100, "a ClientHello: {} B", hello.len());
        for cut in 0..hello.len() {
            let mut s = server();
            assert_eq!(feed(&mut s, &hello[..cut]).unwrap(), Progress::Handshaking, "cut at {cut}");
            assert!(s.buffered() <= MAX_INCOMING);
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..hello.len() {
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut broken = hello.clone();
                broken[i] ^= (seed as u8) | 1;
                let mut s = server();
                if feed(&mut s, &broken).is_err() {
                    assert!(s.process().is_err(), "an error is final");
                }
                s.queue_close_notify();
                assert!(s.buffered() <= MAX_INCOMING);
            }
        }
    }
}
