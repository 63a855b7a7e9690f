//! What embedded-tls needs from the gateway: a socket it can read and write from two tasks, a
//! random source shared by the links, and certificate verification against the pinned CA.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embedded_io_async::{ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{Aes128GcmSha256, Certificate, CryptoProvider, TlsError, TlsVerifier};
use rand_core::{CryptoRng, RngCore};

/// Largest server certificate message the verifier keeps while checking the handshake. The
/// aggregator's self-made ECDSA certificate is about 600 bytes.
pub const MAX_SERVER_CERT_LEN: usize = 2048;

/// The two halves of a TCP socket (from `edge_nal::TcpSplit`) as one cloneable socket, so that
/// embedded-tls can split the connection into a reader task and a writer task. Each half sits
/// behind its own async mutex: the reader only ever locks the read half, the writer the write
/// half, so neither waits on the other.
pub struct Halves<'a, R, W> {
    read: &'a Mutex<NoopRawMutex, R>,
    write: &'a Mutex<NoopRawMutex, W>,
}

impl<R, W> core::fmt::Debug for Halves<'_, R, W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Halves")
    }
}

impl<R, W> Clone for Halves<'_, R, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, W> Copy for Halves<'_, R, W> {}

impl<'a, R, W> Halves<'a, R, W> {
    /// Joins the halves.
    pub fn new(read: &'a Mutex<NoopRawMutex, R>, write: &'a Mutex<NoopRawMutex, W>) -> Self {
        Self { read, write }
    }
}

impl<R: ErrorType, W: ErrorType<Error = R::Error>> ErrorType for Halves<'_, R, W> {
    type Error = R::Error;
}

impl<R: Read, W: Write<Error = R::Error>> Read for Halves<'_, R, W> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.read.lock().await.read(buf).await
    }
}

impl<R: Read, W: Write<Error = R::Error>> Write for Halves<'_, R, W> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.write.lock().await.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.write.lock().await.flush().await
    }
}

/// One random source shared by every link and TLS handshake on the executor; each call borrows
/// it only for the call.
pub struct SharedRng<'a, R>(pub &'a RefCell<R>);

impl<R> core::fmt::Debug for SharedRng<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedRng")
    }
}

impl<R: RngCore> RngCore for SharedRng<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.borrow_mut().next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.borrow_mut().next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.borrow_mut().fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.borrow_mut().try_fill_bytes(dest)
    }
}

impl<R: CryptoRng> CryptoRng for SharedRng<'_, R> {}

/// The clock certificates' validity periods are checked against: the system's on the host build
/// (feature `std`); on a board, the aggregator's time as the board learnt it from an earlier link
/// ([`LearnedClock`]).
#[cfg(feature = "std")]
pub type Clock = SystemClock;
/// See the `std` build's [`Clock`].
#[cfg(not(feature = "std"))]
pub type Clock = LearnedClock;

/// A board's wall clock for certificates: Unix time minus the board's own clock (seconds since
/// boot), learnt from the `Date` of the aggregator's answer to a trunk upgrade (inside TLS with
/// the pinned CA, so as trustworthy as the aggregator). 0 until a link has come up. One per
/// image, like the board: embedded-tls asks its clock without a value to ask (`TlsClock::now`).
/// 32 bits hold Unix time until 2106; ARMv7-M has 32-bit atomics, not 64.
static UNIX_MINUS_UPTIME_SECS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Tells the board's certificate clock the aggregator's time (Unix seconds), from a link that
/// just came up. The host build checks against the system clock and ignores it.
pub fn learn_unix_time(unix_secs: u64) {
    let offset = unix_secs.saturating_sub(embassy_time::Instant::now().as_secs());
    let offset = u32::try_from(offset).unwrap_or(0);
    UNIX_MINUS_UPTIME_SECS.store(offset, core::sync::atomic::Ordering::Relaxed);
}

/// Until the first link after boot has come up a board knows no time, and validity periods are
/// not checked (the pinned CA is the trust); from then on, every handshake (a reconnect, the
/// other link) refuses an aggregator certificate that has expired or is not yet valid (#12, M5).
#[derive(Debug)]
pub struct LearnedClock;

impl embedded_tls::TlsClock for LearnedClock {
    fn now() -> Option<u64> {
        match UNIX_MINUS_UPTIME_SECS.load(core::sync::atomic::Ordering::Relaxed) {
            0 => None,
            offset => Some(u64::from(offset) + embassy_time::Instant::now().as_secs()),
        }
    }
}

/// The system's time, in Unix seconds (the host build).
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct SystemClock;

#[cfg(feature = "std")]
impl embedded_tls::TlsClock for SystemClock {
    fn now() -> Option<u64> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(since.as_secs())
    }
}

/// Verifies the aggregator against the pinned CA (and the configured server name), with the
/// gateway's random source. The aggregator signs with ECDSA P-256 / SHA-256, which embedded-tls
/// verifies without an allocator. Validity periods are checked where there is a [`Clock`].
pub struct Provider<'a, R> {
    rng: SharedRng<'a, R>,
    verifier: LeafOnly<'a>,
}

/// The pinned CA must have signed the aggregator's certificate itself: a chain with anything
/// between them is refused. embedded-tls checks each link's signature and the name, not
/// basicConstraints, so a certificate the CA issued to anyone (not a CA) could otherwise sign a
/// certificate for the aggregator's name; with the leaf alone, only the CA's own signature counts.
/// (The aggregator's self-made CA signs its certificate directly; a deployment with an
/// intermediate pins the intermediate.)
pub struct LeafOnly<'a>(CertVerifier<'a, Aes128GcmSha256, Clock, MAX_SERVER_CERT_LEN>);

impl core::fmt::Debug for LeafOnly<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LeafOnly")
    }
}

impl TlsVerifier<Aes128GcmSha256> for LeafOnly<'_> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        self.0.set_hostname_verification(hostname)
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Aes128GcmSha256 as embedded_tls::TlsCipherSuite>::Hash,
        cert: embedded_tls::CertificateRef,
    ) -> Result<(), TlsError> {
        if cert.entries.len() != 1 {
            log::warn!(
                "the aggregator sent {} certificates; only its own, signed by the pinned CA, is accepted",
                cert.entries.len()
            );
            return Err(TlsError::InvalidCertificate);
        }
        self.0.verify_certificate(transcript, cert)
    }

    fn verify_signature(&mut self, verify: embedded_tls::CertificateVerifyRef) -> Result<(), TlsError> {
        self.0.verify_signature(verify)
    }
}

impl<R> core::fmt::Debug for Provider<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Provider")
    }
}

impl<'a, R> Provider<'a, R> {
    /// A provider that trusts only certificates signed by `ca_der`.
    pub fn new(rng: &'a RefCell<R>, ca_der: &'a [u8]) -> Self {
        Self { rng: SharedRng(rng), verifier: LeafOnly(CertVerifier::new(Certificate::X509(ca_der))) }
    }
}

impl<R: RngCore + CryptoRng> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }
}
