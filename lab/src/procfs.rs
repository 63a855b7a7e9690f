//! What the kernel says about processes and sockets, from /proc: CPU time and resident memory per
//! process (the rule: CPU per process from /proc/PID/stat, never from the load
//! average), process trees, and the kernel's own memory for sockets.

use std::fs;

/// CPU time and resident memory of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// utime + stime over the processes, seconds.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub processes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + o.cpu_seconds,
            rss_bytes: self.rss_bytes + o.rss_bytes,
            processes: self.processes + o.processes,
        }
    }
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses:
/// everything up to the last ')' is skipped). Index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// One process's CPU and memory; `None` when it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat)?;
    // Fields 14 and 15 (utime, stime) and 24 (rss, pages): indexes 11, 12 and 21 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(Usage {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second(),
        rss_bytes: rss_pages * page_size(),
        processes: 1,
    })
}

/// One process's user and system CPU seconds (utime, stime); `None` when it is gone.
pub fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime as f64 / ticks_per_second(), stime as f64 / ticks_per_second()))
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`), KiB; `None` when it is gone. RssAnon is
/// the anonymous part of the resident memory (heap, stacks): unlike VmRSS it does not move when
/// the kernel drops a file's pages (this machine runs DAMON with a pageout scheme).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    status_field(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, field)
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        if key != field {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// TCP connections in TIME_WAIT with `ports` at either end (/proc/net/tcp and tcp6).
pub fn time_wait_on(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .map(|t| count_time_wait(&t, ports))
        .sum()
}

fn count_time_wait(table: &str, ports: &[u16]) -> usize {
    // "sl local_address rem_address st ...": addresses as HEX_IP:HEX_PORT, state 06 = TIME_WAIT.
    let port = |a: &str| a.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "06"
                && [f[1], f[2]].iter().any(|a| port(a).is_some_and(|p| ports.contains(&p)))
        })
        .count()
}

/// The sum over `pids` (those that are gone count nothing).
pub fn usage_of(pids: &[u32]) -> Usage {
    pids.iter().filter_map(|&p| usage(p)).fold(Usage::default(), |a, b| a + b)
}

/// Every process's id with its parent's id and its command name.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
        let ppid: u32 = stat_fields(&stat)?.get(1)?.parse().ok()?;
        Some((pid, ppid, comm))
    })
    .collect()
}

/// `root` and every process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, ppid, _)| *ppid == parent).map(|(pid, _, _)| *pid));
        i += 1;
    }
    found
}

/// How many files `pid` holds open (each socket is one); `None` when it is gone.
pub fn open_files(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The processes whose command name is `comm` (the database server's: `postgres`).
pub fn named(comm: &str) -> Vec<u32> {
    processes().into_iter().filter(|(_, _, c)| c == comm).map(|(pid, _, _)| pid).collect()
}

/// The kernel's memory that grows with sockets: slab objects (socket, inode, dentry, TCP
/// control blocks) and the pages of TCP buffers, and how many TCP sockets exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSockets {
    pub slab_bytes: u64,
    pub tcp_buffer_bytes: u64,
    pub tcp_sockets: u64,
}

impl KernelSockets {
    pub fn read() -> Option<KernelSockets> {
        let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
        let sockstat = fs::read_to_string("/proc/net/sockstat").ok()?;
        Self::parse(&meminfo, &sockstat)
    }

    fn parse(meminfo: &str, sockstat: &str) -> Option<KernelSockets> {
        let slab_kib: u64 =
            meminfo.lines().find_map(|l| l.strip_prefix("Slab:"))?.split_whitespace().next()?.parse().ok()?;
        // "TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1"
        let tcp = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
        let words: Vec<&str> = tcp.split_whitespace().collect();
        let value = |name: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == name)?;
            words.get(i + 1)?.parse().ok()
        };
        Some(KernelSockets {
            slab_bytes: slab_kib * 1024,
            tcp_buffer_bytes: value("mem")? * page_size(),
            tcp_sockets: value("alloc")?,
        })
    }

    /// Kernel bytes per TCP socket that appeared between `before` and `self`.
    pub fn per_socket_since(&self, before: &KernelSockets) -> Option<f64> {
        let sockets = self.tcp_sockets.checked_sub(before.tcp_sockets).filter(|&n| n > 0)?;
        let now = self.slab_bytes + self.tcp_buffer_bytes;
        let then = before.slab_bytes + before.tcp_buffer_bytes;
        Some((now as f64 - then as f64) / sockets as f64)
    }
}

/// What a figure of CPU time depends on beyond the code: the processor, the kernel and its
/// Spectre v2 mitigation (retpolines make every indirect call in the network stack dearer). The
/// same VM has moved between hosts: on 2026-12-06 `lab hold` at 200,000 phones measured 0.117
/// cores on an AMD EPYC host and 0.169 to 0.308 on an Intel Xeon one with retpolines, same
/// binaries (docs/benchmarks.md), so every report names the machine it ran on.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let spectre =
        fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/spectre_v2").unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    describe_machine(&cpuinfo, &spectre, &kernel)
}

fn describe_machine(cpuinfo: &str, spectre_v2: &str, kernel: &str) -> String {
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()))
        .unwrap_or("unknown processor");
    // "Mitigation: Retpolines; STIBP: disabled; ..." -> "Retpolines": the first clause says it.
    let spectre = spectre_v2.trim();
    let spectre =
        spectre.strip_prefix("Mitigation: ").unwrap_or(spectre).split(';').next().unwrap_or("").trim();
    let spectre = if spectre.is_empty() { "unknown" } else { spectre };
    format!("{model}, spectre_v2 {spectre}, Linux {}", kernel.trim())
}

/// The soft limit on open files of this process (children inherit it).
pub fn files_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    }
}

/// Raises this process's soft limit on open files to its hard limit (children inherit it): the
/// most any process here may hold.
pub fn raise_files_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    files_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_and_memory() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        assert_eq!(u.processes, 1);
    }

    #[test]
    fn a_tree_holds_the_children() {
        let child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pids = tree(std::process::id());
        let id = child.id();
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert!(pids.contains(&id), "{id} not in {pids:?}");
    }

    #[test]
    fn stat_with_a_strange_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000 250";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "1");
        assert_eq!((f[11], f[12], f[21]), ("7", "3", "250"));
    }

    #[test]
    fn status_and_time_wait() {
        let status = "Name:\tnode\nVmRSS:\t   51200 kB\nRssAnon:\t   20480 kB\n";
        assert_eq!(status_field(status, "RssAnon"), Some(20480));
        assert_eq!(status_field(status, "VmRSS"), Some(51200));
        assert_eq!(status_field(status, "Rss"), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:4E20 0100007F:9C40 06 00000000:00000000\n\
   1: 0100007F:9C41 0100007F:4E20 06 00000000:00000000\n\
   2: 0100007F:4E20 0100007F:9C42 01 00000000:00000000\n\
   3: 0100007F:1F90 0100007F:9C43 06 00000000:00000000\n";
        // Port 0x4E20 = 20000: two in TIME_WAIT (either end), one established.
        assert_eq!(count_time_wait(tcp, &[20000]), 2);
        assert_eq!(count_time_wait(tcp, &[20000, 8080]), 3);
        assert_eq!(count_time_wait(tcp, &[]), 0);
        assert!(cpu_split(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmRSS").is_some_and(|k| k > 0));
    }

    #[test]
    fn machine_description() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        let spectre = "Mitigation: Retpolines; STIBP: disabled; RSB filling\n";
        assert_eq!(
            describe_machine(cpuinfo, spectre, "6.18.44\n"),
            "Intel(R) Xeon(R) Processor, spectre_v2 Retpolines, Linux 6.18.44"
        );
        assert_eq!(
            describe_machine("", "Not affected\n", ""),
            "unknown processor, spectre_v2 Not affected, Linux "
        );
        assert!(!machine().is_empty());
    }

    #[test]
    fn kernel_socket_memory() {
        let meminfo = "MemTotal: 100 kB\nSlab:     2000 kB\n";
        let sockstat = "sockets: used 10\nTCP: inuse 5 orphan 0 tw 0 alloc 7 mem 3\nUDP: inuse 0 mem 0\n";
        let k = KernelSockets::parse(meminfo, sockstat).unwrap();
        assert_eq!(k.slab_bytes, 2_048_000);
        assert_eq!(k.tcp_sockets, 7);
        let later = KernelSockets { slab_bytes: k.slab_bytes + 49_000, tcp_sockets: 17, ..k };
        assert_eq!(later.per_socket_since(&k), Some(4_900.0));
        assert_eq!(k.per_socket_since(&k), None);
    }
}
