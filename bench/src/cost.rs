//! What a command costs: the CPU time each process (the processor, PostgreSQL, Kafka) and the
//! cluster's WAL bytes spent in a measured window, divided by the window's commands, and the
//! cost table that sets the drain and the 50% load point beside PostgreSQL's set-based ingest
//! of the same rows.
//!
//! A window is a [`Mark`] taken right before it and [`Mark::cost`] right after. A figure that
//! could not be read (a process not found on this machine, a phase that does not involve it)
//! is `None`: "not measured", `null` in the JSON, never a made-up value.

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::procstat::{Probe, Sample};
use crate::wal;

/// The event-updater's CPU time per command at drain the issue allows, in µs.
pub const PROCESSOR_US_AT_DRAIN: f64 = 15.0;
/// PostgreSQL's CPU and WAL per command at drain against the set-based ingest's, at most.
pub const POSTGRES_TO_INGEST: f64 = 1.5;

/// Where a window starts: every process's CPU ticks and the WAL position.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    cpu: Sample,
    wal: Option<i64>,
}

/// The cost of one window, per command (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub commands: u64,
    /// The event-updater process's CPU µs per command.
    pub processor_us: Option<f64>,
    /// PostgreSQL's (every process of the server) CPU µs per command.
    pub postgres_us: Option<f64>,
    /// The Kafka broker's CPU µs per command.
    pub kafka_us: Option<f64>,
    /// The benchmark's own process's CPU µs per command (the client of the pass-through).
    pub bench_us: Option<f64>,
    /// WAL bytes per command (the cluster's).
    pub wal_bytes: Option<f64>,
}

/// The WAL position, or `None` where it cannot be read (with the reason on stderr).
pub async fn wal_position(admin_url: &str) -> Option<i64> {
    let read = async {
        let mut c = PgConnection::connect(admin_url).await?;
        wal::position(&mut c).await
    };
    match read.await {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("[bench] the WAL position could not be read: {e:#}");
            None
        }
    }
}

impl Mark {
    /// Now: `probe`'s CPU ticks, and the WAL position where `wal` (from `admin_url`).
    pub async fn now(probe: &Probe, admin_url: &str, wal: bool) -> Mark {
        let wal = match wal {
            true => wal_position(admin_url).await,
            false => None,
        };
        Mark {
            cpu: probe.sample(),
            wal,
        }
    }

    /// `probe`'s CPU ticks now, and the WAL position `wal` read a moment before (where read).
    pub fn with_wal(probe: &Probe, wal: Option<i64>) -> Mark {
        Mark {
            cpu: probe.sample(),
            wal,
        }
    }

    /// From this mark to now, over `commands`: the CPU of `probe`'s processes (the same probe
    /// as the mark's) and the WAL bytes (where the mark read the WAL).
    pub async fn cost(&self, probe: &Probe, admin_url: &str, commands: u64) -> Cost {
        let cpu = probe.sample().since(&self.cpu);
        let wal = match self.wal {
            Some(before) => wal_position(admin_url)
                .await
                .and_then(|after| wal::per_command(before, after, commands)),
            None => None,
        };
        let us = |s: Option<f64>| {
            s.filter(|_| commands > 0)
                .map(|s| s * 1e6 / commands as f64)
        };
        Cost {
            commands,
            processor_us: us(cpu.processor),
            postgres_us: us(cpu.postgres),
            kafka_us: us(cpu.kafka),
            bench_us: us(cpu.this),
            wal_bytes: wal,
        }
    }
}

impl Cost {
    pub fn to_json(self) -> Value {
        json!({
            "commands": self.commands,
            "event_updater_cpu_us_per_command": self.processor_us,
            "postgres_cpu_us_per_command": self.postgres_us,
            "kafka_cpu_us_per_command": self.kafka_us,
            "bench_cpu_us_per_command": self.bench_us,
            "postgres_wal_bytes_per_command": self.wal_bytes,
        })
    }
}

/// `a / b`, where both were measured.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?).filter(|r| r.is_finite())
}

/// The cost targets: the processor's CPU at drain, and PostgreSQL's CPU and WAL at drain
/// against the set-based ingest's (`None`: an input was not measured).
pub fn targets(drain: Option<&Cost>, ingest: Option<&Cost>) -> [(&'static str, Option<bool>); 3] {
    let d = |f: fn(&Cost) -> Option<f64>| drain.and_then(f);
    let i = |f: fn(&Cost) -> Option<f64>| ingest.and_then(f);
    [
        (
            "event_updater_cpu_at_drain_at_most_15us",
            d(|c| c.processor_us).map(|us| us <= PROCESSOR_US_AT_DRAIN),
        ),
        (
            "postgres_cpu_at_drain_within_1_5x_of_ingest",
            ratio(d(|c| c.postgres_us), i(|c| c.postgres_us)).map(|r| r <= POSTGRES_TO_INGEST),
        ),
        (
            "postgres_wal_at_drain_within_1_5x_of_ingest",
            ratio(d(|c| c.wal_bytes), i(|c| c.wal_bytes)).map(|r| r <= POSTGRES_TO_INGEST),
        ),
    ]
}

/// "not measured" for `None`, else `show(x)`.
pub fn or_not_measured<T>(x: Option<T>, show: impl FnOnce(T) -> String) -> String {
    x.map_or_else(|| "not measured".to_string(), show)
}

/// "yes", "**no**" or "not measured".
pub fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

/// The cost table (Markdown): a row per process and one for the WAL; columns at drain, at 50%
/// load and the set-based ingest (the event-updater and Kafka have no part in the ingest: "—").
pub fn table(drain: Option<&Cost>, at_50: Option<&Cost>, ingest: Option<&Cost>) -> String {
    let [cpu_target, pg_target, wal_target] = targets(drain, ingest);
    let us = |x: Option<f64>| or_not_measured(x, |v| format!("{v:.1} µs"));
    let bytes = |x: Option<f64>| or_not_measured(x, |v| format!("{v:.0} B"));
    let cell =
        |c: Option<&Cost>, f: fn(&Cost) -> Option<f64>, show: &dyn Fn(Option<f64>) -> String| {
            c.map_or_else(|| "not measured".to_string(), |c| show(f(c)))
        };
    let vs_ingest = |f: fn(&Cost) -> Option<f64>| {
        or_not_measured(ratio(drain.and_then(f), ingest.and_then(f)), |r| {
            format!("{r:.2}x the ingest's")
        })
    };
    // A row whose target is a share of the set-based ingest's figure (PostgreSQL's CPU, WAL).
    let against_ingest = |name: &str,
                          f: fn(&Cost) -> Option<f64>,
                          show: &dyn Fn(Option<f64>) -> String,
                          target_met: Option<bool>| {
        format!(
            "| {name} | {} | {} | {} | <= {POSTGRES_TO_INGEST}x the ingest's at drain (is {}) \
             | {} |",
            cell(drain, f, show),
            cell(at_50, f, show),
            cell(ingest, f, show),
            vs_ingest(f),
            met(target_met)
        )
    };
    let rows = [
        "| Cost per command | At drain | At 50% load | Set-based ingest | Target | Met |"
            .to_string(),
        "|---|---|---|---|---|---|".to_string(),
        format!(
            "| event-updater CPU | {} | {} | — | <= {PROCESSOR_US_AT_DRAIN:.0} µs at drain | {} |",
            cell(drain, |c| c.processor_us, &us),
            cell(at_50, |c| c.processor_us, &us),
            met(cpu_target.1)
        ),
        against_ingest("PostgreSQL CPU", |c| c.postgres_us, &us, pg_target.1),
        format!(
            "| Kafka CPU | {} | {} | — | | |",
            cell(drain, |c| c.kafka_us, &us),
            cell(at_50, |c| c.kafka_us, &us),
        ),
        against_ingest("PostgreSQL WAL", |c| c.wal_bytes, &bytes, wal_target.1),
    ];
    rows.join("\n")
}

/// A cost's figures on one line, "not measured" where not.
pub fn show_cost(c: &Cost) -> String {
    let us = |x: Option<f64>| or_not_measured(x, |v| format!("{v:.1} µs"));
    format!(
        "event-updater CPU {}, PostgreSQL CPU {}, Kafka CPU {}, WAL {}",
        us(c.processor_us),
        us(c.postgres_us),
        us(c.kafka_us),
        or_not_measured(c.wal_bytes, |v| format!("{v:.0} B"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(processor: Option<f64>, postgres: Option<f64>, wal: Option<f64>) -> Cost {
        Cost {
            commands: 10,
            processor_us: processor,
            postgres_us: postgres,
            wal_bytes: wal,
            ..Cost::default()
        }
    }

    #[test]
    fn targets_are_met_missed_or_not_measured_never_guessed() {
        let drain = cost(Some(15.0), Some(30.0), Some(3000.0));
        let ingest = cost(None, Some(20.0), Some(1000.0));
        let t = targets(Some(&drain), Some(&ingest));
        assert_eq!(t[0].1, Some(true));
        assert_eq!(t[1].1, Some(true), "30 µs is 1.5x 20 µs");
        assert_eq!(t[2].1, Some(false), "3x the ingest's WAL");
        let t = targets(Some(&cost(Some(16.0), None, None)), None);
        assert_eq!(t.map(|(_, m)| m), [Some(false), None, None]);
        assert_eq!(targets(None, None).map(|(_, m)| m), [None, None, None]);
        let table = table(Some(&drain), None, None);
        assert!(
            table.contains("| event-updater CPU | 15.0 µs | not measured | — |"),
            "{table}"
        );
        assert!(
            table.contains("(is not measured) | not measured |"),
            "{table}"
        );
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
