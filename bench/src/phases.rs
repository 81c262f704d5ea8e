//! The benchmark's phases, selectable with `--phases` (all by default), so that a change can be
//! measured quickly on the phases it moves (say `--phases drain,ingest,pass-through`).

use clap::ValueEnum;

/// One phase of the benchmark, named on the command line as shown (`pass-through`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Phase {
    /// The backlog drains on an empty log, the feed on and off (`--feed-rounds`).
    Drain,
    /// The naive baseline (MAX_BATCH=1, one lane).
    Naive,
    /// The broker pass-through: consume, produce, no database.
    PassThrough,
    /// PostgreSQL's set-based ingest of the same rows.
    Ingest,
    /// The drain after `--preload-changes` changes were put in the log.
    FullLog,
    /// The latency–load curve beside the broker's echo.
    Curve,
    /// Process start to first reply on a warm database.
    Startup,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 7] = [
        Phase::Drain,
        Phase::PassThrough,
        Phase::Naive,
        Phase::Ingest,
        Phase::FullLog,
        Phase::Curve,
        Phase::Startup,
    ];

    /// Its name on the command line and in the JSON.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// The phases asked for (none named: all of them), without repeats, in running order.
pub fn selected(asked: &[Phase]) -> Vec<Phase> {
    Phase::ALL
        .into_iter()
        .filter(|p| asked.is_empty() || asked.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_phase_named_is_every_phase_and_names_are_kebab_case() {
        assert_eq!(selected(&[]), Phase::ALL.to_vec());
        assert_eq!(
            selected(&[Phase::Ingest, Phase::Drain, Phase::Ingest]),
            vec![Phase::Drain, Phase::Ingest]
        );
        assert_eq!(Phase::PassThrough.name(), "pass-through");
        assert_eq!(Phase::FullLog.name(), "full-log");
        assert_eq!(Phase::from_str("startup", false), Ok(Phase::Startup));
    }
}
