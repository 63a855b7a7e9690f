//! Two ways to cut one trunk's TCP connection in the middle of a run: the kernel's SOCK_DESTROY
//! through `ss -K` (it aborts our end and resets the peer), and, where the kernel cannot do that
//! (no CONFIG_INET_DIAG_DESTROY), a relay in the lab that gateway 1's trunks go through and that
//! resets one of them on both sides when asked.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::oneshot;

/// Whether `ss -K` can destroy a TCP socket here: tried on a throwaway connection of our own.
pub fn sock_destroy_works() -> bool {
    let probe = || -> std::io::Result<bool> {
        let server = TcpListener::bind("127.0.0.1:0")?;
        let mut client = TcpStream::connect(server.local_addr()?)?;
        let (_peer, _) = server.accept()?;
        let port = client.local_addr()?.port();
        std::process::Command::new("ss")
            .args(["-K", "-Htn", &format!("( sport = :{port} )")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        client.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut byte = [0u8; 1];
        Ok(match client.read(&mut byte) {
            // Aborted by the kernel.
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            // Still alive (a byte, or an orderly close is not what SOCK_DESTROY does).
            Ok(_) => false,
        })
    };
    probe().unwrap_or(false)
}

/// Cuts one established connection of process `pid` to `front` with `ss -K`, matched on its
/// whole 4-tuple (ports alone also match other sockets: nginx's connections to the aggregators
/// end in the same port, and any of them may start from the trunk's port number); checks that it
/// is gone. `local -> peer`.
pub async fn cut_with_ss(pid: u32, front: SocketAddr) -> anyhow::Result<String> {
    let listing = ss(&["-Htnp", "state", "established", &format!("dst = {front}")]).await?;
    let mark = format!("pid={pid},");
    let line = listing.lines().find(|l| l.contains(&mark)).context("gateway 1 has no trunk connection")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, peer) = match fields.as_slice() {
        [_, _, local, peer, ..] => (*local, *peer),
        _ => bail!("ss printed an unexpected line: {line}"),
    };
    let tuple = format!("( src = {local} and dst = {peer} )");
    ss(&["-K", "-Htn", "state", "established", &tuple]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !ss(&["-Htn", "state", "established", &tuple]).await?.trim().is_empty() {
        bail!("ss -K did not close the connection {local} -> {peer}");
    }
    Ok(format!("{local} -> {peer}"))
}

async fn ss(args: &[&str]) -> anyhow::Result<String> {
    let mut c = tokio::process::Command::new("ss");
    c.args(args);
    crate::children::output(c).await
}

/// The relay's open connections, oldest first: what each connects, and its cutter.
type Cutters = Arc<Mutex<Vec<(String, oneshot::Sender<()>)>>>;

/// A TCP relay on 127.0.0.1 to one upstream address; [`Relay::cut`] resets one of its
/// connections on both sides. It stops with the value.
pub struct Relay {
    addr: SocketAddr,
    live: Cutters,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live: Cutters = Arc::default();
        let list = Arc::clone(&live);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, from)) = listener.accept().await {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (cut, cutting) = oneshot::channel();
                if let Ok(mut l) = list.lock() {
                    l.push((format!("{from} -> {upstream}"), cut));
                }
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        Ok(()) = cutting => {
                            // A linger of zero makes the close a reset, on both sides.
                            let _ = client.set_zero_linger();
                            let _ = server.set_zero_linger();
                        }
                    }
                });
            }
        });
        Ok(Relay { addr, live, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets the oldest connection still open; what it connected (`None`: none open).
    pub fn cut(&self) -> Option<String> {
        let mut live = self.live.lock().ok()?;
        while !live.is_empty() {
            let (what, cut) = live.remove(0);
            if cut.send(()).is_ok() {
                return Some(what);
            }
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_relay_passes_bytes_and_its_cut_resets_both_sides() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(upstream.local_addr().unwrap()).await.unwrap();
        let mut client = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
        let (mut server, _) = upstream.accept().await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        server.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        assert!(relay.cut().is_some());
        let mut rest = Vec::new();
        let client_end = client.read_to_end(&mut rest).await;
        let server_end = server.read_to_end(&mut rest).await;
        assert_eq!(client_end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(server_end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert!(relay.cut().is_none(), "nothing left to cut");
    }
}
