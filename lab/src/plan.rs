//! How many processes a run of N phones needs, and where each one listens.
//!
//! Every phone is a socket in the gateway that holds it and another in the mobile-sim process
//! that plays it, and a process may hold only as many sockets as it may open files. So the
//! phones are spread over as many host gateways (and as many mobile-sim workers) as that limit
//! needs, each on its own loopback address as if on its own host.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::bail;

/// Files a gateway or mobile-sim process needs besides its phones' sockets: trunk links,
/// listeners, logs, the executor's own (epoll, eventfd), the runtime's.
pub const SPARE_FILES: u64 = 500;

/// Loopback addresses per third octet used for gateways (127.0.G.1 ..= 127.0.G.250).
const GATEWAYS_PER_OCTET: u32 = 250;

/// The processes of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phones: u64,
    /// Host gateway processes; mobile-sim spreads its phones over them round-robin.
    pub gateways: u32,
    /// Phones each gateway is given room for (`--capacity`): its share, rounded up.
    pub phones_per_gateway: u64,
    /// The most phones one mobile-sim process holds (`--per-process`).
    pub phones_per_sim_process: u64,
    /// mobile-sim processes (the parent runs the phones itself when there is one; otherwise the
    /// parent only coordinates).
    pub sim_processes: u64,
}

impl Plan {
    /// A plan for `phones` phones, at most `per_process` in any one process, where a process may
    /// open `files_limit` files.
    pub fn new(phones: u64, per_process: u64, files_limit: u64) -> anyhow::Result<Plan> {
        if phones == 0 {
            bail!("a run needs at least one phone");
        }
        let room = files_limit.saturating_sub(SPARE_FILES);
        if room == 0 {
            bail!("a process may open only {files_limit} files: no room for phones");
        }
        let per_process = per_process.min(room).max(1);
        let gateways = phones.div_ceil(per_process);
        if gateways > u64::from(GATEWAYS_PER_OCTET) * 250 {
            bail!("{phones} phones would need {gateways} gateway processes: more than this lab lays out");
        }
        Ok(Plan {
            phones,
            gateways: gateways as u32,
            phones_per_gateway: phones.div_ceil(gateways),
            phones_per_sim_process: per_process,
            sim_processes: phones.div_ceil(per_process),
        })
    }

    /// Where gateway `i` (0-based) listens for phones: 127.0.(2 + i/250).(1 + i%250), port `port`.
    pub fn gateway_addr(i: u32, port: u16) -> SocketAddr {
        let third = 2 + i / GATEWAYS_PER_OCTET;
        let fourth = 1 + i % GATEWAYS_PER_OCTET;
        SocketAddr::from((Ipv4Addr::new(127, 0, third as u8, fourth as u8), port))
    }

    /// Where the aggregator listens: its own address, 127.0.1.1.
    pub fn aggregator_addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1), port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_phones_at_the_machines_file_limit() {
        let plan = Plan::new(1_000_000, 19_000, 20_000).unwrap();
        assert_eq!(plan.gateways, 53);
        assert_eq!(plan.phones_per_gateway, 18_868);
        assert_eq!(plan.sim_processes, 53);
        assert!(plan.phones_per_gateway * u64::from(plan.gateways) >= plan.phones);
    }

    #[test]
    fn the_file_limit_bounds_a_process_whatever_was_asked() {
        let plan = Plan::new(50_000, 19_000, 10_000).unwrap();
        assert_eq!(plan.phones_per_sim_process, 9_500);
        assert_eq!(plan.gateways, 6);
        assert!(plan.phones_per_gateway + SPARE_FILES <= 10_000);
    }

    #[test]
    fn small_runs_have_one_process_each() {
        let plan = Plan::new(300, 19_000, 20_000).unwrap();
        assert_eq!((plan.gateways, plan.phones_per_gateway, plan.sim_processes), (1, 300, 1));
    }

    #[test]
    fn refusals() {
        assert!(Plan::new(0, 19_000, 20_000).is_err());
        assert!(Plan::new(10, 19_000, 100).is_err());
    }

    #[test]
    fn gateway_addresses_are_distinct_loopback_hosts() {
        assert_eq!(Plan::gateway_addr(0, 9000).to_string(), "127.0.2.1:9000");
        assert_eq!(Plan::gateway_addr(249, 9000).to_string(), "127.0.2.250:9000");
        assert_eq!(Plan::gateway_addr(250, 9000).to_string(), "127.0.3.1:9000");
    }
}
