//! Where to look: the start-up message every run prints (phone page, dashboard, metrics, the CA
//! for phones), and `--lan`, which serves a real phone on this machine's local network.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::Settings;

/// What `--lan` decided, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The address phones use.
    pub address: IpAddr,
}

/// Applies `--lan` to the settings: the LAN address to listen on and to name in the certificate.
/// `None` without `--lan`.
pub fn apply(s: &mut Settings) -> anyhow::Result<Option<Lan>> {
    if !s.lan {
        return Ok(None);
    }
    let ip = s.listen.ip();
    let address = if ip.is_loopback() || ip.is_unspecified() {
        let found = default_route_address().context(
            "--lan: cannot tell this machine's LAN address (no default route?); give it with --listen ADDRESS:PORT",
        )?;
        if ip.is_loopback() {
            s.listen = SocketAddr::new(found, s.listen.port());
        }
        found
    } else {
        ip
    };
    if s.tls_cert.is_some() {
        tracing::warn!(%address, "--lan with --tls-cert: the certificate must name {address} for phones to trust it");
    } else {
        s.tls_sans.push(address.to_string());
    }
    Ok(Some(Lan { address }))
}

/// The address this machine's default route leaves from: a UDP socket "connected" to an address
/// beyond the LAN makes the kernel pick the route and the source address. No packet is sent
/// (connecting a UDP socket only records its peer); 192.0.2.1 is a documentation address.
fn default_route_address() -> anyhow::Result<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
    let ip = socket.local_addr()?.ip();
    anyhow::ensure!(!ip.is_loopback() && !ip.is_unspecified(), "the default route leaves from {ip}");
    Ok(ip)
}

/// The CA certificate phones are offered at `/ca.crt`: `--ca-cert`, else the self-made CA.
#[derive(Debug, Clone)]
pub struct CaOffer {
    pub path: PathBuf,
    /// The file as served (PEM).
    pub pem: Vec<u8>,
    /// SHA-256 of the first certificate (DER), `AB:CD:...`: what a phone shows to compare.
    pub fingerprint: String,
}

impl CaOffer {
    pub fn load(path: &Path) -> anyhow::Result<CaOffer> {
        use rustls::pki_types::pem::PemObject as _;
        let pem =
            std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
        let first = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()
            .with_context(|| format!("{}: no certificate in the file", path.display()))?
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, first.as_ref());
        let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        Ok(CaOffer { path: path.to_owned(), pem, fingerprint })
    }
}

/// The start-up message: where the phone page, the dashboard and the metrics are, where phones
/// get the CA, and with `--lan` the phone page's QR code.
pub fn where_to_look(
    s: &Settings,
    scheme: &str,
    bound: SocketAddr,
    ca: Option<&CaOffer>,
    lan: Option<&Lan>,
    token_made: bool,
) -> anyhow::Result<String> {
    let host = match lan {
        Some(lan) => SocketAddr::new(lan.address, bound.port()).to_string(),
        None => bound.to_string(),
    };
    let base = format!("{scheme}://{host}");
    let dashboard = if token_made {
        // Made for this run: the terminal is the only place it is known.
        format!(
            "{base}/dashboard?token={}   (token made for this run; --dashboard-token sets one)",
            s.dashboard_token
        )
    } else {
        format!("{base}/dashboard   (add ?token=YOUR_TOKEN, the --dashboard-token)")
    };
    // With phone authentication the page needs a device and its token: a demo device's link.
    let phone_page = match crate::devices::demo_link(s)? {
        Some((device, token)) => format!("{base}/?device={device}&token={token}"),
        None => format!("{base}/"),
    };
    let mut out = String::new();
    out.push_str(&format!("  phone page   {phone_page}\n"));
    out.push_str(&format!("  dashboard    {dashboard}\n"));
    out.push_str(&format!("  metrics      {base}/metrics\n"));
    if let Some(ca) = ca {
        out.push_str(&format!("  CA           {}   (phones: {base}/ca)\n", ca.path.display()));
        out.push_str(&format!("               SHA-256 {}\n", ca.fingerprint));
    }
    if lan.is_some() {
        out.push_str(&format!(
            "\nOn the phone (same Wi-Fi): install the CA from {base}/ca (accept the certificate warning that\n\
             one time, and check that the phone shows the SHA-256 above), then open the phone page:\n\n"
        ));
        let colours = std::io::stdout().is_terminal();
        out.push_str(&crate::qr::render(&phone_page, colours)?);
        out.push_str(&format!("  {phone_page}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The rest of the line in `text` after `prefix`.
    fn value_after<'t>(text: &'t str, prefix: &str) -> &'t str {
        let at = text.find(prefix).unwrap_or_else(|| panic!("{prefix:?} in {text}")) + prefix.len();
        text[at..].split_whitespace().next().unwrap()
    }

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["aggregator"];
        argv.extend_from_slice(args);
        crate::config::Cli::parse_from(argv).serve
    }

    #[test]
    fn lan_on_a_given_address_names_it_and_makes_a_token() {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_str().unwrap();
        let mut s = settings(&["--lan", "--listen", "10.77.0.1:9443", "--data-dir", data_dir]);
        let lan = apply(&mut s).unwrap().unwrap();
        assert_eq!(lan.address, "10.77.0.1".parse::<IpAddr>().unwrap());
        assert!(crate::web::make_token_if_unset(&mut s));
        assert_eq!(s.listen, "10.77.0.1:9443".parse().unwrap());
        assert_eq!(s.tls_sans, vec!["10.77.0.1".to_owned()]);
        assert_eq!(s.dashboard_token.len(), 32);
        let text = where_to_look(&s, "https", s.listen, None, Some(&lan), true).unwrap();
        assert!(
            text.contains(&format!("https://10.77.0.1:9443/dashboard?token={}", s.dashboard_token)),
            "{text}"
        );
        // The phone page's link names a demo device and carries its token, valid for the key
        // in the data folder.
        let link = value_after(&text, "phone page   https://10.77.0.1:9443/?device=");
        let (device, token) = link.split_once("&token=").expect("a device and its token");
        let key = crate::devices::load_or_create(&crate::devices::key_path(&s)).unwrap().public_key();
        assert!(key.verify(device.as_bytes(), token.as_bytes(), Some(crate::devices::unix_now())).is_ok());
        assert!(text.contains("█") || text.contains('▀') || text.contains('▄'), "a QR code: {text}");
    }

    #[test]
    fn a_given_token_is_kept_and_not_printed() {
        let mut s = settings(&[
            "--lan",
            "--listen",
            "10.77.0.1:9443",
            "--dashboard-token",
            "s3cret",
            "--phone-auth",
            "off",
        ]);
        let lan = apply(&mut s).unwrap().unwrap();
        assert!(!crate::web::make_token_if_unset(&mut s));
        assert_eq!(s.dashboard_token, "s3cret");
        let text = where_to_look(&s, "https", s.listen, None, Some(&lan), false).unwrap();
        assert!(!text.contains("s3cret") && text.contains("?token=YOUR_TOKEN"), "{text}");
    }

    #[test]
    fn without_lan_every_run_still_says_where_to_look() {
        let mut s = settings(&["--phone-auth", "off"]);
        assert_eq!(apply(&mut s).unwrap(), None);
        assert!(crate::web::make_token_if_unset(&mut s));
        let text = where_to_look(&s, "https", "127.0.0.1:8443".parse().unwrap(), None, None, true).unwrap();
        assert!(
            text.contains("phone page   https://127.0.0.1:8443/\n"),
            "without phone auth, no token: {text}"
        );
        let dashboard = format!("dashboard    https://127.0.0.1:8443/dashboard?token={}", s.dashboard_token);
        assert!(text.contains(&dashboard), "{text}");
        assert!(text.contains("metrics      https://127.0.0.1:8443/metrics"), "{text}");
    }

    #[test]
    fn lan_and_plain_do_not_go_together() {
        let parsed = crate::config::Cli::try_parse_from(["aggregator", "--lan", "--plain"]);
        assert!(parsed.is_err());
    }
}
