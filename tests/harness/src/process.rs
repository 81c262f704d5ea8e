//! `event-updater serve` as a child process: the tests' crash, signal and memory checks and
//! the benchmark's processor under test. The caller builds the command (binary and
//! environment); this module owns its standard streams, its lifetime (it is killed when the
//! [`Processor`] is dropped, so a failed test or phase never leaves it running) and how it is
//! watched: its log, its exit, its peak RSS.
//!
//! Signals are sent with `kill(1)`: the crate forbids `unsafe`, and a signal is the interface
//! an operator's supervisor uses too.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{io, Error, Result};

/// Where the child's stderr (its log) goes.
#[derive(Debug, Clone)]
pub enum Log {
    /// A file (created, or truncated): the log can be searched and shown on failure.
    File(PathBuf),
    /// This process's own stderr.
    Inherit,
}

impl Log {
    /// Where the log is, and for a file its last lines: what a failure report needs.
    fn describe(&self) -> String {
        const TAIL: usize = 20;
        match self {
            Log::File(p) => {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(TAIL)..].join("\n");
                format!("{}, ending:\n{tail}", p.display())
            }
            Log::Inherit => "on stderr".to_string(),
        }
    }
}

/// A running processor.
#[derive(Debug)]
pub struct Processor {
    child: tokio::process::Child,
    pid: u32,
    log: Log,
}

impl Processor {
    /// Starts `command` with stdin and stdout closed and stderr to `log`.
    pub fn start(mut command: tokio::process::Command, log: Log) -> Result<Processor> {
        let stderr = match &log {
            Log::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(io(format!("creating {}", dir.display())))?;
                }
                Stdio::from(
                    std::fs::File::create(path)
                        .map_err(io(format!("creating {}", path.display())))?,
                )
            }
            Log::Inherit => Stdio::inherit(),
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(io(format!("starting {:?}", command.as_std().get_program())))?;
        let pid = child.id().ok_or_else(|| Error::Io {
            what: "starting the processor".into(),
            source: std::io::Error::other("it has no pid"),
        })?;
        Ok(Processor { child, pid, log })
    }

    /// Waits until the log contains `needle` (say `subscribed`, so that a signal sent
    /// afterwards finds the handlers installed). Fails if the processor exits first, or after
    /// `bound`. Needs [`Log::File`].
    pub async fn wait_for_log(&mut self, needle: &str, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the log did not say {needle:?}"),
                    bound,
                    log: self.log.describe(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log so far (empty with [`Log::Inherit`]).
    pub fn log(&self) -> String {
        match &self.log {
            Log::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
            Log::Inherit => String::new(),
        }
    }

    /// Where the log is.
    pub fn log_path(&self) -> Option<&std::path::Path> {
        match &self.log {
            Log::File(p) => Some(p),
            Log::Inherit => None,
        }
    }

    /// Fails when the processor has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self
            .child
            .try_wait()
            .map_err(io("waiting for the processor"))?
        {
            Some(status) => Err(Error::Exited {
                status,
                log: self.log.describe(),
            }),
            None => Ok(()),
        }
    }

    /// The processor's peak resident set size so far, in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        peak_rss(self.pid)
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let what = format!("kill -{signal} {}", self.pid);
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .map_err(io(what.clone()))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Io {
                what,
                source: std::io::Error::other(format!("kill exited with {status}")),
            })
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill9(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .map_err(io(format!("kill -9 {}", self.pid)))
    }

    /// Waits (at most `bound`) for the processor to exit by itself.
    pub async fn wait(mut self, bound: Duration) -> Result<ExitStatus> {
        self.wait_bounded(bound, "the processor did not exit").await
    }

    /// SIGTERM, then waits at most `bound`; the exit status and how long the stop took.
    pub async fn terminate(mut self, bound: Duration) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        self.signal("TERM")?;
        let status = self
            .wait_bounded(bound, "the processor did not stop after SIGTERM")
            .await?;
        Ok((status, started.elapsed()))
    }

    /// SIGTERM, then waits at most `bound`; fails unless the processor exits with status 0.
    /// How long the stop took.
    pub async fn stop(self, bound: Duration) -> Result<Duration> {
        let log = self.log.describe();
        match self.terminate(bound).await? {
            (status, took) if status.success() => Ok(took),
            (status, _) => Err(Error::Exited { status, log }),
        }
    }

    async fn wait_bounded(&mut self, bound: Duration, what: &str) -> Result<ExitStatus> {
        match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(status) => status.map_err(io("waiting for the processor")),
            Err(_) => Err(Error::Timeout {
                what: what.to_string(),
                bound,
                log: self.log.describe(),
            }),
        }
    }
}

/// The peak resident set size of process `pid` so far (`VmHWM` of `/proc/<pid>/status`), in
/// bytes. Linux only.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(io(format!("reading {path}")))?;
    vm_hwm(&status).ok_or_else(|| Error::Io {
        what: format!("reading {path}"),
        source: std::io::Error::other("no VmHWM line"),
    })
}

fn vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_read_in_bytes_from_the_status_file() {
        let status =
            "Name:\tevent-updater\nVmPeak:\t  900 kB\nVmHWM:\t  131072 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm(status), Some(128 * 1024 * 1024));
        assert_eq!(vm_hwm("Name:\tx\n"), None);
    }

    #[tokio::test]
    async fn this_process_has_a_peak_and_a_child_is_stopped_and_reports_how() {
        assert!(peak_rss(std::process::id()).unwrap() > 0);
        let mut sleep = tokio::process::Command::new("sleep");
        sleep.arg("30");
        let mut child = Processor::start(sleep, Log::Inherit).unwrap();
        child.ensure_running().unwrap();
        let (status, _) = child.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success(), "killed by SIGTERM: {status}");
    }

    #[tokio::test]
    async fn a_child_that_exits_early_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("harness-{}", std::process::id()));
        let log = dir.join("early.log");
        let mut sh = tokio::process::Command::new("sh");
        sh.args(["-c", "echo starting >&2; exit 3"]);
        let mut child = Processor::start(sh, Log::File(log.clone())).unwrap();
        let err = child
            .wait_for_log("subscribed", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Exited { .. }), "{err}");
        assert!(child.log().contains("starting"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
