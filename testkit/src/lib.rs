//! What holdfast's integration tests share, in one place instead of files included by path:
//! real databases ([`db`]: a fresh Postgres database per test on the server of `DATABASE_URL`)
//! and the real aggregator, as a process a test can SIGKILL, SIGTERM and restart or in the test's
//! own process ([`process`]), a test CA ([`pki`]), what phones do ([`phones`]), and a real browser ([`browser`]: headless Chromium over
//! WebDriver). Used by the aggregator's tests and the gateway's.

pub mod browser;
pub mod db;
pub mod phones;
pub mod pki;
pub mod process;

/// A TCP connection to `addr`, from the local address `from` if given (every 127.x.y.z is this
/// machine: tests of per-address bounds play several clients that way).
pub async fn tcp_from(
    from: Option<std::net::IpAddr>,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(from) = from else { return tokio::net::TcpStream::connect(addr).await };
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment variables a binary's settings read: every `env = "NAME"` in `source`, the
/// source of its clap settings (`include_str!`), so that a setting added later is covered too.
pub fn env_settings(source: &str) -> Vec<String> {
    source.split("env = \"").skip(1).filter_map(|rest| rest.split('"').next()).map(str::to_owned).collect()
}

/// Runs `command` with each of `names` set to "" and panics unless it succeeded: an empty
/// variable means unset (the `cli-env` crate), so the binary must behave as with none.
pub fn run_with_empty_settings(
    command: &mut std::process::Command,
    names: &[String],
) -> std::process::Output {
    for name in names {
        command.env(name, "");
    }
    let out = command.output().expect("the binary runs");
    assert!(
        out.status.success(),
        "empty variables were taken as values: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
