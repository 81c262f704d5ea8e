//! The Grafana dashboard (deploy/grafana) queries only metrics the README documents and the
//! binary exports, with their labels, from the provisioned Prometheus datasource.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::support::{json_file, readme_section, str_at, yaml};

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Metric names, with their label names, in PromQL expressions.
fn promql_metrics(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    const KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut grouping: BTreeSet<String> = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            if KEYWORDS.contains(&word.as_str()) && chars.get(j) == Some(&'(') {
                let end = j + chars[j..].iter().position(|&c| c == ')').expect("closed");
                let list: String = chars[j + 1..end].iter().collect();
                grouping.extend(
                    list.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
                i = end + 1;
            } else if word.starts_with("event_updater_") {
                let mut labels = BTreeSet::new();
                if chars.get(j) == Some(&'{') {
                    let end = j + chars[j..].iter().position(|&c| c == '}').expect("closed");
                    let matchers: String = chars[j + 1..end].iter().collect();
                    for m in matchers.split(',') {
                        let name = m.split(['=', '!']).next().unwrap().trim();
                        if !name.is_empty() {
                            labels.insert(name.to_string());
                        }
                    }
                    i = end + 1;
                }
                out.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    // Grouping labels apply to the metrics of the expression.
    for (_, labels) in &mut out {
        labels.extend(grouping.iter().cloned());
    }
    out
}

/// README's documented metrics (the "Operating it" section): name -> label names.
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let section = readme_section("Operating it");
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("event_updater_"))
        .map(|s| {
            let (name, labels) = s.split_once('{').unwrap_or((s, ""));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            (name.to_string(), labels)
        })
        .collect()
}

/// The histogram series a documented metric exports.
fn base_metric(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// What the binary's metrics module renders after recording one of each happening: metric
/// series name -> label names.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    use event_updater::domain::decide::OutcomeKind;
    use event_updater::domain::reply::Destination;
    use event_updater::metrics;
    let handle = metrics::install().expect("the recorder installs");
    metrics::record_command(201, OutcomeKind::New, Some(Duration::from_millis(3)));
    metrics::record_batch(5, Duration::from_millis(2), None);
    metrics::record_db_error(metrics::DbErrorKind::Unavailable);
    metrics::record_published(Destination::Reply, 1);
    metrics::record_published(Destination::DeadLetter, 1);
    metrics::record_publish_failed(Destination::Reply, false);
    metrics::record_rebalance(3);
    metrics::record_consumer_lag("commands", 0, 7);
    metrics::record_published(Destination::Changes, 1);
    metrics::record_published(Destination::View, 1);
    metrics::record_publish_failed(Destination::Changes, false);
    metrics::record_topic_unusable(Destination::Changes, "changes", false);
    metrics::record_feed_lag(3, Duration::from_millis(40));
    let text = handle.render();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split_whitespace().next().unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_string()).or_default();
        for l in labels.trim_end_matches('}').split(',') {
            if let Some((k, _)) = l.split_once('=') {
                entry.insert(k.to_string());
            }
        }
    }
    // The DLQ series the dashboard selects.
    assert!(
        text.contains("event_updater_records_published_total{topic=\"dlq\"}"),
        "{text}"
    );
    out
}

#[test]
fn the_dashboard_queries_documented_and_exported_metrics_only() {
    let dashboard = json_file("deploy/grafana/dashboards/event-updater.json");
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let uid = str_at(&datasources, "/datasources/0/uid");
    assert_eq!(str_at(&datasources, "/datasources/0/type"), "prometheus");

    let documented = documented_metrics();
    assert!(
        documented.contains_key("event_updater_commands_total")
            && documented.contains_key("event_updater_command_latency_seconds"),
        "README's metric list is read: {documented:?}"
    );
    let exported = exported_series();

    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["type"] == "row" {
            // A row only groups the panels below it: no query of its own.
            assert!(panel.get("targets").is_none(), "row {title}");
            continue;
        }
        assert_eq!(
            panel.pointer("/datasource/uid").and_then(Value::as_str),
            Some(uid),
            "panel {title}: the provisioned datasource"
        );
        for t in panel["targets"].as_array().expect("targets") {
            if let Some(ds) = t.pointer("/datasource/uid") {
                assert_eq!(ds, uid, "panel {title}");
            }
            exprs.push(str_at(t, "/expr").to_string());
        }
    }
    assert!(!exprs.is_empty());

    for expr in &exprs {
        let metrics = promql_metrics(expr);
        assert!(
            !metrics.is_empty(),
            "{expr} queries an event_updater_ metric"
        );
        for (name, labels) in metrics {
            let base = base_metric(&name);
            let doc_labels = documented
                .get(&name)
                .or_else(|| documented.get(base))
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not in README's metrics"));
            let exported_labels = exported
                .get(&name)
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not exported: {exported:?}"));
            for label in &labels {
                let ok = TARGET_LABELS.contains(&label.as_str())
                    || (doc_labels.contains(label) && exported_labels.contains(label))
                    || (label == "le"
                        && name.ends_with("_bucket")
                        && exported_labels.contains(label));
                assert!(ok, "label {label} of {name} in {expr}");
            }
        }
    }

    // The panels the dashboard is for.
    let all = exprs.join("\n");
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has("rate(event_updater_commands_total[1m])") && all.contains("by (status)"));
    for h in [
        "event_updater_command_latency_seconds_bucket",
        "event_updater_batch_size_bucket",
        "event_updater_db_transaction_seconds_bucket",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("histogram_quantile") && e.contains(h)),
            "quantiles of {h}"
        );
    }
    assert!(exprs
        .iter()
        .any(|e| e.contains("event_updater_consumer_lag") && e.contains("by (partition)")));
    assert!(has(
        "rate(event_updater_records_published_total{topic=\"dlq\"}[1m])"
    ));
    // The change feed's row: its records published, its publish failures, its lag.
    assert!(dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .any(|p| p["type"] == "row" && p["title"] == "Change feed"));
    let feed = "topic=~\"changes|view\"";
    assert!(has(&format!(
        "rate(event_updater_records_published_total{{{feed}}}[1m])"
    )));
    assert!(has(&format!(
        "rate(event_updater_publish_failures_total{{{feed}}}[1m])"
    )));
    for gauge in [
        "event_updater_feed_lag_changes",
        "event_updater_feed_lag_seconds",
    ] {
        assert!(has(gauge), "a panel of {gauge}");
    }
}
