//! CPU time of the processes a phase exercises, read from `/proc` (Linux only): the processor
//! (its child process), PostgreSQL (the postmaster and every process it forked, including those
//! that exited meanwhile) and the Kafka broker (the JVM running `kafka.Kafka`). A [`Probe`]
//! takes a [`Sample`] before and after a measured window; [`Sample::since`] gives each
//! process's CPU time in that window, never over the process's life.
//!
//! Times are `utime + stime` in clock ticks of `USER_HZ` (100 on every Linux ABI). PostgreSQL's
//! sum is the postmaster's own time, its `cutime + cstime` (children it has reaped: backends of
//! closed connections) and the `utime + stime + cutime + cstime` of its live children; a child
//! that exits inside the window moves from the last to the second, so the delta stays whole.
//! (PostgreSQL's processes fork no children of their own; a grandchild still running would be
//! counted only once reaped.) The sample is one scan of `/proc`, not an atomic snapshot: a
//! child reaped between reading the postmaster and reading the child is counted twice or not
//! at all, a few ticks at most.

use std::collections::HashMap;

/// The unit of `/proc/<pid>/stat`'s times: `USER_HZ`, 100 on every Linux ABI.
pub const USER_HZ: f64 = 100.0;

/// The marker of the broker's JVM in its command line.
const KAFKA_MAIN_CLASS: &str = "kafka.Kafka";

/// The fields of a `/proc/<pid>/stat` line the benchmark reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// `utime + stime`: the process's own CPU time, every thread.
    pub own: u64,
    /// `cutime + cstime`: the CPU time of its children that exited and were waited for.
    pub children: u64,
}

/// Parses a `/proc/<pid>/stat` line: fields are counted after the command name (in
/// parentheses, and free to hold spaces or parentheses itself), whose next field is the third.
/// `ppid` is field 4, `utime`/`stime` 14 and 15, `cutime`/`cstime` 16 and 17.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// `utime + stime` of a `/proc/<pid>/stat` line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat(stat).map(|s| s.own)
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU time (user and system, every thread) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| anyhow::anyhow!("no utime and stime in {path}"))?;
    Ok(ticks as f64 / USER_HZ)
}

/// Every process's stat, by pid.
fn all_stats() -> HashMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// PostgreSQL's CPU ticks so far: the postmaster's own and reaped children's, plus its live
/// children's own and reaped children's (what the postmaster's `cutime` gains when such a
/// child exits), from one scan of `stats`.
pub fn postgres_ticks(postmaster: u32, stats: &HashMap<u32, Stat>) -> Option<u64> {
    let pm = stats.get(&postmaster)?;
    let live: u64 = stats
        .values()
        .filter(|s| s.ppid == postmaster)
        .map(|s| s.own + s.children)
        .sum();
    Some(pm.own + pm.children + live)
}

/// The postmaster of the backend `backend` (`SELECT pg_backend_pid()`): its parent, where that
/// is a `postgres` process on this machine (a server in another pid namespace or on another
/// host is not found: its backend's pid names another process here, or none).
pub fn postmaster_of(backend: u32) -> Option<u32> {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let is_postgres = |pid: u32| comm(pid).is_some_and(|c| c.trim() == "postgres");
    let parent = read_stat(backend)?.ppid;
    (is_postgres(backend) && is_postgres(parent)).then_some(parent)
}

/// The inodes of the sockets listening on TCP `port` (`/proc/net/tcp` and `tcp6`).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(listening_in(&text, port));
        }
    }
    out
}

/// The inodes of the sockets of a `/proc/net/tcp` table in state LISTEN (`0A`) on `port`.
pub fn listening_in(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Whether process `pid` holds one of the sockets `inodes`.
fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

/// The broker's JVM on this machine: the process whose command line holds `kafka.Kafka` and
/// that listens on `port` (the bootstrap server's); where no listening socket can be matched,
/// the only such process. `None` where there is none (a broker on another host) or several
/// that cannot be told apart.
pub fn kafka_broker(port: u16) -> Option<u32> {
    let candidates: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg == KAFKA_MAIN_CLASS.as_bytes())
            })
        })
        .collect();
    let inodes = listening_inodes(port);
    let listening: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|pid| !inodes.is_empty() && holds_socket(*pid, &inodes))
        .collect();
    match (listening.as_slice(), candidates.as_slice()) {
        ([one], _) => Some(*one),
        ([], [only]) if inodes.is_empty() => Some(*only),
        _ => None,
    }
}

/// The port of the first bootstrap server (`host:port[,…]`) where its host is this machine's
/// loopback (a broker elsewhere has no process here to read).
pub fn local_port(bootstrap: &str) -> Option<u16> {
    let first = bootstrap.split(',').next()?.trim();
    let (host, port) = first.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    local.then(|| port.parse().ok()).flatten()
}

/// The processes whose CPU a window is measured on; each `None` is not measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    pub processor: Option<u32>,
    pub postmaster: Option<u32>,
    pub kafka: Option<u32>,
    /// The benchmark's own process (the client of the pass-through).
    pub this: bool,
}

/// CPU ticks so far of each process of a [`Probe`] (`None`: not measured or gone).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub processor: Option<u64>,
    pub postgres: Option<u64>,
    pub kafka: Option<u64>,
    pub this: Option<u64>,
}

impl Probe {
    /// The ticks of every process of the probe, now.
    pub fn sample(&self) -> Sample {
        let stats = all_stats();
        let own = |pid: Option<u32>| pid.and_then(|p| stats.get(&p)).map(|s| s.own);
        Sample {
            processor: own(self.processor),
            postgres: self.postmaster.and_then(|pm| postgres_ticks(pm, &stats)),
            kafka: own(self.kafka),
            this: self.this.then(|| own(Some(std::process::id()))).flatten(),
        }
    }

    /// The same probe with the processor `pid` (or none).
    pub fn with_processor(self, pid: Option<u32>) -> Probe {
        Probe {
            processor: pid,
            ..self
        }
    }
}

/// CPU seconds each process used in a window (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuWindow {
    pub processor: Option<f64>,
    pub postgres: Option<f64>,
    pub kafka: Option<f64>,
    pub this: Option<f64>,
}

impl Sample {
    /// What each process used from `before` to this sample, in seconds.
    pub fn since(&self, before: &Sample) -> CpuWindow {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.checked_sub(b?)? as f64 / USER_HZ);
        CpuWindow {
            processor: d(self.processor, before.processor),
            postgres: d(self.postgres, before.postgres),
            kafka: d(self.kafka, before.kafka),
            this: d(self.this, before.this),
        }
    }
}

/// The machine's 1-minute load average (`/proc/loadavg`), where it can be read.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_average_is_read() {
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (event updater (x)) S 17 4242 4242 0 -1 4194560 5 0 0 0 1234 56 7 8 20 0 9 0 100 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                ppid: 17,
                own: 1290,
                children: 15
            })
        );
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        let me = read_stat(std::process::id()).unwrap();
        assert_eq!(Some(me.ppid), std::os::unix::process::parent_id().into());
    }

    #[test]
    fn postgres_is_the_postmaster_its_reaped_and_its_live_children() {
        let stat = |ppid, own, children| Stat {
            ppid,
            own,
            children,
        };
        let stats = HashMap::from([
            (10, stat(1, 5, 100)),
            (11, stat(10, 7, 0)),
            (12, stat(10, 30, 4)),
            (13, stat(1, 1000, 0)),
            (14, stat(11, 50, 0)),
        ]);
        // 5 + 100 of its own and reaped children, 7 + 30 + 4 of its live ones (14 is in none:
        // not reaped yet); not 13.
        assert_eq!(postgres_ticks(10, &stats), Some(146));
        assert_eq!(postgres_ticks(99, &stats), None);
        // A backend that exits inside the window moves to the reaped children: no loss.
        let before = Sample {
            postgres: postgres_ticks(10, &stats),
            ..Sample::default()
        };
        let mut after_stats = stats.clone();
        after_stats.remove(&12);
        after_stats.insert(10, stat(1, 5, 100 + 34));
        let after = Sample {
            postgres: postgres_ticks(10, &after_stats),
            ..Sample::default()
        };
        assert_eq!(after.since(&before).postgres, Some(0.0));
        assert_eq!(after.since(&before).kafka, None);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2384 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 4444 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_in(table, 9092), vec![4242]);
        assert_eq!(listening_in(table, 5432), vec![4444]);
        assert!(listening_in(table, 1).is_empty());
        assert_eq!(local_port("127.0.0.1:9092"), Some(9092));
        assert_eq!(local_port("localhost:9093,10.0.0.2:9092"), Some(9093));
        assert_eq!(local_port("[::1]:9092"), Some(9092));
        assert_eq!(local_port("kafka.example:9092"), None);
        assert_eq!(local_port("10.0.0.2:9092"), None);
    }
}
