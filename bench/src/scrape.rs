//! The processor's histograms, read from its `/metrics` (its command latency and the stages of
//! each batch), and their percentiles between two scrapes, as Prometheus interpolates them.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::bail;

use crate::percentiles::Percentiles;

/// The series of stage `stage` in the processor's stage histogram.
pub fn stage_series(stage: &str) -> String {
    format!("{}{{stage=\"{stage}\"}}", event_updater::metrics::STAGE)
}

/// Where a stage comes in a batch's life, for the tables' order: the processor's own order
/// ([`event_updater::metrics::Stage::ALL`]); a stage it does not name there comes after, by name.
pub fn stage_rank(stage: &str) -> (usize, String) {
    let all = event_updater::metrics::Stage::ALL;
    let rank = all
        .iter()
        .position(|s| s.as_str() == stage)
        .unwrap_or(all.len());
    (rank, stage.to_string())
}

/// Every stage of the processor's stage histogram in a scrape, in [`stage_rank`] order.
pub fn stage_names(scrape: &Histograms) -> Vec<String> {
    let prefix = format!("{}{{stage=\"", event_updater::metrics::STAGE);
    let mut names: Vec<String> = scrape
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix("\"}"))
        .map(str::to_string)
        .collect();
    names.sort_by_key(|s| stage_rank(s));
    names.dedup();
    names
}

/// The processor's histograms, read from its `/metrics`: for each series (the metric's name
/// with its labels but `le`, e.g. `event_updater_stage_seconds{stage="apply"}`), its buckets as
/// (upper bound in seconds, cumulative count).
pub type Histograms = HashMap<String, Vec<(f64, f64)>>;

pub async fn scrape_histograms(addr: SocketAddr) -> anyhow::Result<Histograms> {
    let (status, text) = event_updater_harness::http::get(addr, "/metrics").await?;
    if status != 200 {
        bail!("GET /metrics from the processor at {addr}: status {status}");
    }
    let mut out: Histograms = HashMap::new();
    for line in text.lines() {
        let Some((series, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let mut le = None;
        let mut rest = Vec::new();
        for l in labels.split(',') {
            match l.strip_prefix("le=") {
                Some(v) => le = Some(v.trim_matches('"')),
                None => rest.push(l),
            }
        }
        let Some(le) = le else { continue };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let key = if rest.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", rest.join(","))
        };
        out.entry(key)
            .or_default()
            .push((le, count.trim().parse()?));
    }
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

/// [`histogram_percentiles`] of one series between two scrapes.
pub fn series_percentiles(before: &Histograms, after: &Histograms, series: &str) -> Percentiles {
    let empty = Vec::new();
    histogram_percentiles(
        before.get(series).unwrap_or(&empty),
        after.get(series).unwrap_or(&empty),
    )
}

/// p50, p99 (interpolated within buckets, as Prometheus' `histogram_quantile`) and the upper
/// bound of the highest bucket reached, of what was recorded between two scrapes, in ms.
fn histogram_percentiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Percentiles {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let quantile = |q: f64| -> f64 {
        let Some(total) = diff.last().map(|(_, n)| *n).filter(|n| *n > 0.0) else {
            return f64::NAN;
        };
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for (le, n) in &diff {
            if *n >= rank {
                if le.is_infinite() {
                    return prev.0 * 1e3;
                }
                let share = if n - prev.1 > 0.0 {
                    (rank - prev.1) / (n - prev.1)
                } else {
                    1.0
                };
                return (prev.0 + (le - prev.0) * share) * 1e3;
            }
            prev = (*le, *n);
        }
        f64::NAN
    };
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    let max = diff
        .iter()
        .find(|(_, n)| *n >= total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| le * 1e3);
    Percentiles {
        p50: quantile(0.50),
        p99: quantile(0.99),
        p999: quantile(0.999),
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_reach_p99_9_and_stages_come_in_running_order() {
        // 1000 observations: 990 up to 10 ms, 9 more up to 20 ms, the last up to 40 ms.
        let before = [(0.01, 0.0), (0.02, 0.0), (0.04, 0.0), (f64::INFINITY, 0.0)];
        let after = [
            (0.01, 990.0),
            (0.02, 999.0),
            (0.04, 1000.0),
            (f64::INFINITY, 1000.0),
        ];
        let p = histogram_percentiles(&before, &after);
        assert!((p.p99 - 10.0).abs() < 1e-9, "{p:?}");
        assert!((p.p999 - 20.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.max, 40.0);
        let series = |stage: &str| (stage_series(stage), after.to_vec());
        let scrape: Histograms = [
            "publish", "zeta", "queue", "write", "read", "alpha", "apply",
        ]
        .into_iter()
        .map(series)
        .chain([("event_updater_command_latency_seconds".to_string(), vec![])])
        .collect();
        assert_eq!(
            stage_names(&scrape),
            ["queue", "apply", "read", "write", "publish", "alpha", "zeta"]
        );
    }
}
