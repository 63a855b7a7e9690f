//! Connections per client address (finding M7 of issue #12): one machine must not be able to take
//! every place of a server that accepts phones (the aggregator, the host gateway), nor every
//! trunk handshake place of the aggregator.
//!
//! Two bounds per address, checked when a connection is accepted, before TLS:
//! - connections open at once, sessions included (`--max-connections-per-address`);
//! - connections not yet admitted as a session (the aggregator's `--max-handshakes-per-address`:
//!   a phone before its token is accepted, a trunk before its gateway is authenticated). These
//!   cost without proving anything, so one address holds at most this many of those places. The
//!   server says when a connection became a session ([`Slot::settle`]).
//!
//! An address is an IPv4 address or an IPv6 /64 (what one subscriber usually gets). Addresses in
//! an exempt block (loopback by default: a local proxy such as nginx, which then applies its own
//! `limit_conn`, see deploy/nginx) are not counted, and cost nothing: no entry, no allocation. A
//! connection beyond a bound is to be closed at once, before any TLS work.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A block of addresses, `ADDRESS/PREFIX` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip.to_bits(), self.prefix) == net.to_bits(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip.to_bits(), self.prefix) == net.to_bits(),
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = address.trim().parse().map_err(|_| format!("{s:?}: not an IP address"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4.to_bits(), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6.to_bits(), prefix).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The bounds (from `--max-connections-per-address`, `--max-handshakes-per-address`,
/// `--address-limit-exempt`).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Connections one address may have open at once.
    pub connections: u32,
    /// Connections one address may have that are not yet sessions.
    pub handshakes: u32,
    /// Blocks not counted.
    pub exempt: Vec<Cidr>,
}

/// The blocks exempt by default: loopback (a local proxy, local tools).
pub const DEFAULT_EXEMPT: &str = "127.0.0.0/8,::1";

/// Why a connection was turned away (a metric label and what a plain-HTTP client is told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections open.
    Connections,
    /// Too many connections not yet sessions.
    Handshakes,
}

impl Refusal {
    /// What the client is told and the metric's label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "too many connections from one address",
            Refusal::Handshakes => "too many handshakes from one address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    open: u32,
    handshaking: u32,
}

/// The connections of each address that are open now.
#[derive(Debug)]
pub struct AddressLimits {
    bounds: Bounds,
    table: Mutex<HashMap<IpAddr, Counts>>,
}

impl AddressLimits {
    /// A table for `bounds`, shared by the accepting task and every slot.
    pub fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(AddressLimits { bounds, table: Mutex::new(HashMap::new()) })
    }

    /// Admits a new connection from `ip`, or says which bound it would pass. The connection
    /// counts until every clone of the returned [`Slot`] is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = ip.to_canonical();
        if self.bounds.exempt.iter().any(|c| c.contains(ip)) {
            return Ok(Slot(None));
        }
        let key = key(ip);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let counts = table.entry(key).or_default();
        if counts.open >= self.bounds.connections {
            return Err(Refusal::Connections);
        }
        if counts.handshaking >= self.bounds.handshakes {
            return Err(Refusal::Handshakes);
        }
        counts.open += 1;
        counts.handshaking += 1;
        Ok(Slot(Some(Arc::new(SlotInner { limits: self.clone(), key, handshaking: AtomicBool::new(true) }))))
    }

    /// Addresses with connections open now (for tests and metrics).
    pub fn addresses(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn release(&self, key: IpAddr, handshaking: bool) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = table.get_mut(&key) {
            counts.open = counts.open.saturating_sub(1);
            if handshaking {
                counts.handshaking = counts.handshaking.saturating_sub(1);
            }
            if counts.open == 0 {
                table.remove(&key);
            }
        }
    }

    fn settled(&self, key: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = table.get_mut(&key) {
            counts.handshaking = counts.handshaking.saturating_sub(1);
        }
    }
}

/// What an address is counted as: an IPv4 address, or the /64 of an IPv6 one.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(mask_v6(v6.to_bits(), 64))),
    }
}

/// A connection's place under its address's bounds; cloned into whatever task carries the
/// connection on (an upgraded phone or trunk), and given back when the last clone is dropped.
/// `None` for an exempt address: a pointer's worth, nothing allocated.
#[derive(Debug, Clone)]
pub struct Slot(Option<Arc<SlotInner>>);

#[derive(Debug)]
struct SlotInner {
    limits: Arc<AddressLimits>,
    key: IpAddr,
    handshaking: AtomicBool,
}

impl Slot {
    /// The connection became a session (a phone admitted, a gateway authenticated): it no
    /// longer counts against the bound on handshakes.
    pub fn settle(&self) {
        if let Some(inner) = &self.0 {
            if inner.handshaking.swap(false, Ordering::AcqRel) {
                inner.limits.settled(inner.key);
            }
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.limits.release(self.key, *self.handshaking.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, handshakes: u32, exempt: &[&str]) -> Arc<AddressLimits> {
        AddressLimits::new(Bounds {
            connections,
            handshakes,
            exempt: exempt.iter().map(|c| c.parse().unwrap()).collect(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "an IPv4-mapped address is its IPv4 address");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn each_address_has_its_own_bounds() {
        let l = limits(3, 2, &[]);
        let a = ip("192.0.2.1");
        let first = l.admit(a).unwrap();
        let second = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::Handshakes, "two handshakes at once at most");
        assert!(l.admit(ip("192.0.2.2")).is_ok(), "another address is not affected");
        first.settle();
        first.settle(); // twice changes nothing
        let third = l.admit(a).unwrap();
        third.settle();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::Connections, "three open at most");
        drop(second);
        let fourth = l.admit(a).unwrap();
        // Clones share one place: it is given back when the last goes.
        let clone = fourth.clone();
        drop(fourth);
        assert_eq!(l.admit(a).unwrap_err(), Refusal::Connections);
        drop(clone);
        assert!(l.admit(a).is_ok());
        drop((first, third));
        assert_eq!(l.addresses(), 0, "nothing open: nothing kept");
    }

    #[test]
    fn an_ipv6_subscriber_is_its_64_and_exempt_blocks_are_not_counted() {
        let l = limits(1, 1, &["127.0.0.0/8", "::1"]);
        let _one = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(l.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(), Refusal::Connections);
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let held: Vec<Slot> = (0..100).map(|_| l.admit(ip("127.0.0.1")).unwrap()).collect();
        assert!(l.admit(ip("::1")).is_ok() && l.admit(ip("::ffff:127.0.0.2")).is_ok());
        assert_eq!(l.addresses(), 1, "exempt addresses take no room in the table");
        drop(held);
    }
}
