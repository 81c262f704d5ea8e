//! Latency percentiles, in milliseconds: of timed commands ([`percentile`]), and the shape the
//! processor's histograms are read into too; written as the progress lines show them.

use crate::units::fmt_ms;

/// Latency percentiles of one run, in milliseconds (an unanswered command counts as
/// infinitely late, so that it cannot improve a percentile).
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// `p50 / p99 / p99.9`.
    pub fn show(&self) -> String {
        format!(
            "{} / {} / {}",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.p999)
        )
    }

    /// `p50 / p99`.
    pub fn show_p50_p99(&self) -> String {
        format!("{} / {}", fmt_ms(self.p50), fmt_ms(self.p99))
    }
}

/// The `q` quantile of `sorted` (nearest rank; NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
