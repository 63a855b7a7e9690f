//! The run's own network namespace, whose table of established TCP connections is sized for the
//! run's sockets.
//!
//! Why: the kernel finds the socket of every arriving TCP segment (and checks every port a
//! `connect` picks) in one hash table, sized at boot from the machine's memory: 262,144 buckets
//! on the 24 GiB machine of docs/benchmarks.md. A million loopback phones are two million
//! sockets, about eight per bucket, and walking those chains was the largest single item of the
//! phone side's kernel time in the million's profile (`__inet_lookup_established`, 5.8 % of the
//! machine). A deployment sizes the table on the kernel command line (`thash_entries=`,
//! deploy/sysctl/99-holdfast.conf); the lab cannot reboot its machine, but since Linux 6.1 a new
//! network namespace gets a table of its own, of `net.ipv4.tcp_child_ehash_entries` buckets.
//!
//! So [`enter`] moves the lab's main thread into a fresh namespace made with the table the run
//! needs; every process the lab starts afterwards (aggregator, gateways, mobile-sim) inherits it,
//! and the lab's own probes (its scrapes of the aggregator's metrics, its reads of /proc/net) see
//! what they see. PostgreSQL stays where it runs, in the machine's namespace: [`relay`] carries
//! its port into the run's namespace (the lab's own CPU, not counted in any tier).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::kernel::{self, Setting, Wanted};

/// The table size the kernel accepts at most (`tcp_child_ehash_entries`' maximum).
pub const MAX_EHASH_ENTRIES: u64 = 16 * 1024 * 1024;

const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
const EHASH: &str = "/proc/sys/net/ipv4/tcp_ehash_entries";
/// Held while the lab changes the machine's `tcp_child_ehash_entries` for a moment.
const LOCK: &str = "/tmp/holdfast-lab-netns.lock";

/// Buckets for a run that holds `sockets` TCP sockets: one per socket, rounded up to a power of
/// two (the kernel rounds up anyway), within the kernel's bounds.
pub fn buckets_for(sockets: u64) -> u64 {
    sockets.max(1024).next_power_of_two().min(MAX_EHASH_ENTRIES)
}

/// Whether this kernel gives new namespaces tables of their own (Linux 6.1 and later).
pub fn supported() -> bool {
    std::path::Path::new(CHILD_EHASH).exists()
}

/// The namespace a run entered.
#[derive(Debug, Clone, Serialize)]
pub struct Entered {
    /// Buckets asked for.
    pub ehash_entries_asked: u64,
    /// Buckets the namespace's table has (`net.ipv4.tcp_ehash_entries` read inside it).
    pub ehash_entries: i64,
    /// The machine's own table, for comparison.
    pub machine_ehash_entries: i64,
    /// deploy/sysctl/99-holdfast.conf inside the namespace (a new namespace starts from the
    /// kernel's defaults for its own settings: port range, backlogs, buffers).
    pub settings: Vec<Setting>,
    /// The machine's namespace, where PostgreSQL is reached.
    #[serde(skip)]
    pub machine: Arc<OwnedFd>,
}

fn read_number(file: &mut File) -> anyhow::Result<i64> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(text.trim().parse()?)
}

fn write_number(file: &mut File, n: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(n.to_string().as_bytes())
}

/// Moves the calling thread (the lab's main thread, before it starts any process) into a new
/// network namespace whose connection table has `ehash_entries` buckets; brings its loopback up
/// and applies `wanted` there. Needs root and Linux 6.1 or later.
pub fn enter(ehash_entries: u64, wanted: &[Wanted]) -> anyhow::Result<Entered> {
    if !kernel::is_root() {
        bail!("a network namespace of its own needs root (or run with --ehash-entries shared)");
    }
    let machine =
        OwnedFd::from(File::open("/proc/thread-self/ns/net").context("opening the network namespace")?);
    let machine_ehash_entries: i64 = std::fs::read_to_string(EHASH)?.trim().parse()?;
    // The child table's size is read from the creator's namespace when the new one is made: set
    // it, make the namespace, and put the old value back through the same open file (a sysctl
    // file stays bound to the namespace it was opened in). Under a lock, so that labs starting
    // at once (the tests) neither make each other's namespaces nor restore each other's value.
    let lock = File::create(LOCK).with_context(|| format!("creating {LOCK}"))?;
    // SAFETY: flock(2) on a file we hold open; the lock ends when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {LOCK}: {}", std::io::Error::last_os_error());
    }
    let mut child = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CHILD_EHASH)
        .with_context(|| format!("{CHILD_EHASH} (Linux 6.1 or later has it)"))?;
    let was = read_number(&mut child)?;
    write_number(&mut child, ehash_entries).with_context(|| format!("writing {CHILD_EHASH}"))?;
    // SAFETY: unshare(2) changes only the calling thread's namespaces.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    let unshare_error = std::io::Error::last_os_error();
    write_number(&mut child, u64::try_from(was).unwrap_or(0))
        .with_context(|| format!("restoring {CHILD_EHASH}"))?;
    drop(lock);
    if unshared != 0 {
        bail!("unshare(CLONE_NEWNET): {unshare_error}");
    }
    loopback_up()?;
    let ehash_entries_now: i64 = std::fs::read_to_string(EHASH)?.trim().parse()?;
    let settings = kernel::settle(wanted, true);
    Ok(Entered {
        ehash_entries_asked: ehash_entries,
        ehash_entries: ehash_entries_now,
        machine_ehash_entries,
        settings,
        machine: Arc::new(machine),
    })
}

/// `ip link set lo up`, for the current namespace.
fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: a datagram socket for the interface ioctls; closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a socket we just opened and own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A TCP connection to `addr` made from the namespace `ns` (a socket belongs to the namespace it
/// was made in, whichever thread uses it afterwards). On a thread of its own, which enters `ns`
/// and ends: the caller's thread stays where it is. A loopback connect takes microseconds, so
/// the caller may block on it.
pub fn connect_in(ns: &OwnedFd, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on this short-lived thread only; `fd` is open for the scope.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

/// Where a PostgreSQL URL points: its host (an IPv4 address or `localhost`) and port.
pub fn database_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().with_context(|| format!("the port in {host_port}"))?),
        None => (host_port, 5432),
    };
    let ip: std::net::Ipv4Addr = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST,
        h => h.parse().with_context(|| format!("the database host {h:?} is not an IPv4 address"))?,
    };
    if !ip.is_loopback() {
        bail!("the database at {ip} is not on this machine: run with --ehash-entries shared");
    }
    Ok(SocketAddr::from((ip, port)))
}

/// Listens on `addr` inside the current namespace and carries every connection to `addr` in the
/// machine's namespace `machine` (PostgreSQL's port, for the processes in the run's namespace).
pub fn relay(addr: SocketAddr, machine: Arc<OwnedFd>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let mut inside = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of files, most likely: a moment for connections to end.
                    eprintln!("lab: the database relay's accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let outside = connect_in(&machine, addr).and_then(|s| {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                tokio::net::TcpStream::from_std(s)
            });
            match outside {
                Ok(mut outside) => {
                    let _ = inside.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    });
                }
                Err(e) => eprintln!("lab: relaying to the database at {addr}: {e}"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(buckets_for(2_000_300), 2_097_152);
        assert_eq!(buckets_for(0), 1024);
        assert_eq!(buckets_for(u64::MAX / 4), MAX_EHASH_ENTRIES);
    }

    #[test]
    fn database_addresses() {
        let a = database_addr("postgres://holdfast:holdfast@127.0.0.1:5432/holdfast").unwrap();
        assert_eq!(a, "127.0.0.1:5432".parse().unwrap());
        assert_eq!(database_addr("postgres://u@localhost/db").unwrap(), "127.0.0.1:5432".parse().unwrap());
        assert!(database_addr("postgres://u:p@10.0.0.5:5432/db").is_err());
        assert!(database_addr("postgres://u:p@db.example:5432/db").is_err());
    }
}
