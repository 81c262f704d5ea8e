//! Rebuilding the `events` projection from `event_log`: verify it, and repair it on request.
//!
//! The log is the truth and the view a fold of it (`fold(changes) == view row`, see
//! [`projection`]). [`run`] re-folds every event, one batch of events at a time (keyset
//! pagination by `event_uuid`, so memory stays bounded and every batch is one short index range
//! scan), and sorts each event into: equal, [`FindingKind::Differs`] (the view row is not the
//! fold), [`FindingKind::Missing`] (a log without a view row), [`FindingKind::Extra`] (a view row
//! without a log) or [`FindingKind::Broken`] (a log that cannot be folded). By default it only
//! verifies; with [`Options::write`] it replaces the differing rows, inserts the missing ones and
//! removes the extra ones, one transaction per batch. Broken events are reported, never written.
//!
//! Changes are read exactly as [`store`] reads them (`change::text`, parsed with
//! [`pyjson::parse_str`]), view rows with the store's own column forms, and repaired rows are
//! written by the store's own upsert: the rebuilt view is byte for byte what the processor
//! would have written. The binary (`src/tools.rs`) prints the progress and the report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::projection::{self, EventState};
use crate::drf::pyjson;
use crate::store::{self, StoreError};

/// Events per batch when the caller does not say.
pub const DEFAULT_BATCH_SIZE: u32 = 1_000;

/// How often a batch that keeps conflicting with concurrent writers is tried before giving up.
const MAX_ATTEMPTS: u32 = 20;

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per batch (and per transaction).
    pub batch_size: u32,
    /// Repair the view (otherwise only verify).
    pub write: bool,
    /// How many findings the report keeps, for display.
    pub sample: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch_size: DEFAULT_BATCH_SIZE,
            write: false,
            sample: 10,
        }
    }
}

/// How an event's view row stands against the fold of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The view row differs from the fold.
    Differs,
    /// The log has the event, the view has no row for it.
    Missing,
    /// The view has a row, the log has nothing for it.
    Extra,
    /// The log cannot be folded (a gap, a change that does not parse); never written.
    Broken,
}

/// One event whose view row is not the fold of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub event_uuid: Uuid,
    pub kind: FindingKind,
    /// What differs (field names), or why the log cannot be folded.
    pub detail: String,
}

/// What a rebuild found (and did) so far; passed to the progress callback after every batch.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events seen (in the log, the view or both).
    pub events: u64,
    /// Log rows folded.
    pub changes: u64,
    pub batches: u64,
    pub differing: u64,
    pub missing: u64,
    pub extra: u64,
    pub broken: u64,
    /// View rows replaced, inserted or removed (only with [`Options::write`]).
    pub repaired: u64,
    /// Batches tried again after a conflict with a concurrent writer.
    pub retries: u64,
    pub elapsed: Duration,
    /// The first findings, in `event_uuid` order, up to [`Options::sample`].
    pub first: Vec<Finding>,
}

impl Report {
    /// Events whose view row is not the fold of their log.
    pub fn differences(&self) -> u64 {
        self.differing + self.missing + self.extra + self.broken
    }

    /// Differences still in the view: all of them when verifying, the broken ones after a repair.
    pub fn unrepaired(&self) -> u64 {
        self.differences() - self.repaired
    }

    pub fn events_per_second(&self) -> f64 {
        per_second(self.events, self.elapsed)
    }

    pub fn changes_per_second(&self) -> f64 {
        per_second(self.changes, self.elapsed)
    }

    fn add(&mut self, c: &Comparison, sample: usize) {
        self.events += c.events;
        self.changes += c.changes;
        self.batches += 1;
        for f in &c.findings {
            match f.kind {
                FindingKind::Differs => self.differing += 1,
                FindingKind::Missing => self.missing += 1,
                FindingKind::Extra => self.extra += 1,
                FindingKind::Broken => self.broken += 1,
            }
        }
        let room = sample.saturating_sub(self.first.len());
        self.first.extend(c.findings.iter().take(room).cloned());
    }
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("the batch size must be at least 1")]
    BatchSize,
    /// The database failed (or refused) outside the conflicts that are retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A batch kept conflicting with concurrent writers.
    #[error(
        "the batch after {after:?} still conflicted with concurrent writers after {attempts} \
        attempts"
    )]
    Contended { after: Option<Uuid>, attempts: u32 },
}

/// Rebuilds every event from the log, batch by batch, calling `progress` after each batch with
/// the report so far; returns the final report.
///
/// Concurrency (a processor may be running): every batch is one `REPEATABLE READ` transaction,
/// so the batch's log rows and view rows are read from one snapshot and never disagree merely
/// because a command committed between two reads. Verifying takes no locks (a `READ ONLY`
/// transaction), so it never delays the processor. Repairing locks, with `FOR UPDATE` and in
/// `event_uuid` order (the order the processor locks in, so the two cannot deadlock), exactly
/// the view rows it replaces or removes, after the comparison and before writing. Under
/// `REPEATABLE READ` that lock fails with a serialization error when a processor changed the
/// row after the snapshot, and so does inserting a missing row that a processor created
/// meanwhile; the batch is then rolled back and tried again on a fresh snapshot. So a repair
/// never writes a fold older than what a processor committed, and a processor waiting on a
/// locked row reads the repaired row once the batch commits. Locking only the rows that differ
/// (not the whole batch) keeps a consistent view entirely lock-free.
pub async fn run(
    pool: &PgPool,
    opts: &Options,
    mut progress: impl FnMut(&Report),
) -> Result<Report, RebuildError> {
    if opts.batch_size == 0 {
        return Err(RebuildError::BatchSize);
    }
    let started = Instant::now();
    let mut report = Report::default();
    let mut after: Option<Uuid> = None;
    loop {
        let batch = batch_retrying(pool, after, opts, &mut report).await?;
        report.add(&batch.comparison, opts.sample);
        report.repaired += batch.repaired;
        report.elapsed = started.elapsed();
        if batch.comparison.events > 0 {
            progress(&report);
        }
        if !batch.full {
            break;
        }
        after = Some(batch.last);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One batch's result.
struct Batch {
    /// The end of the batch's range (the next batch starts after it).
    last: Uuid,
    /// The batch had `batch_size` events: there may be more.
    full: bool,
    comparison: Comparison,
    repaired: u64,
}

/// Runs the batch after `after`, again on a fresh snapshot when it conflicts with a writer.
async fn batch_retrying(
    pool: &PgPool,
    after: Option<Uuid>,
    opts: &Options,
    report: &mut Report,
) -> Result<Batch, RebuildError> {
    let mut attempt = 1;
    loop {
        match batch(pool, after, opts).await {
            Ok(b) => return Ok(b),
            Err(StoreError::Conflict(e)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(
                    error = %e,
                    attempt,
                    "rebuild batch conflicts with a writer; retrying"
                );
                report.retries += 1;
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(StoreError::Conflict(_)) => {
                return Err(RebuildError::Contended {
                    after,
                    attempts: attempt,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads, compares and (with `write`) repairs the next `batch_size` events after `after`, in
/// one transaction.
async fn batch(pool: &PgPool, after: Option<Uuid>, opts: &Options) -> Result<Batch, StoreError> {
    let mut tx = pool.begin().await?;
    let isolation = if opts.write {
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
    } else {
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    };
    sqlx::query(isolation).execute(&mut *tx).await?;
    let events = next_events(&mut tx, after, opts.batch_size).await?;
    let full = events.len() >= opts.batch_size as usize;
    // The last batch is open-ended: nothing is left after it.
    let upto = match events.last() {
        Some(&last) if full => last,
        _ => Uuid::max(),
    };
    let range = Range { after, upto };
    let log = load_log(&mut tx, &range).await?;
    let views = load_views(&mut tx, &range).await?;
    let comparison = compare(log, views);
    let repaired = if opts.write {
        repair(&mut tx, &comparison, Utc::now()).await?
    } else {
        0
    };
    tx.commit().await?;
    Ok(Batch {
        last: upto,
        full,
        comparison,
        repaired,
    })
}

/// The events of a batch: `after < event_uuid <= upto` (`after` None: from the first).
#[derive(Debug, Clone, Copy)]
struct Range {
    after: Option<Uuid>,
    upto: Uuid,
}

impl Range {
    /// The condition `event_uuid` is after `after`, on `$1`. Two texts rather than
    /// `$1 IS NULL OR …`, so that the plan is always an index range scan.
    fn lower(after: Option<Uuid>) -> &'static str {
        match after {
            None => "event_uuid >= $1",
            Some(_) => "event_uuid > $1",
        }
    }

    /// The `WHERE` condition of the range, on `$1` and `$2` (bound by [`Range::bind`]).
    fn condition(&self) -> String {
        format!("{} AND event_uuid <= $2", Range::lower(self.after))
    }

    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.after.unwrap_or(Uuid::nil())).bind(self.upto)
    }
}

/// The next `limit` events (of the log and the view together) after `after`, in order.
///
/// The log's events are found by a loose index scan (one primary-key probe per event, so a
/// batch costs the same at the start and at the end of a large log; a `DISTINCT` would be
/// planned as a hash over everything after `after`).
async fn next_events(
    tx: &mut Transaction<'_, Postgres>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Uuid>, StoreError> {
    let c = Range::lower(after);
    let sql = format!(
        "WITH RECURSIVE logged(event_uuid) AS (
             (SELECT event_uuid FROM event_log WHERE {c} ORDER BY event_uuid LIMIT 1)
           UNION ALL
             SELECT (SELECT l.event_uuid FROM event_log l WHERE l.event_uuid > logged.event_uuid
                     ORDER BY l.event_uuid LIMIT 1)
             FROM logged WHERE logged.event_uuid IS NOT NULL
         )
         SELECT event_uuid FROM (
           (SELECT event_uuid FROM logged WHERE event_uuid IS NOT NULL LIMIT $2)
           UNION
           (SELECT event_uuid FROM events WHERE {c} ORDER BY event_uuid LIMIT $2)
         ) AS batch ORDER BY event_uuid LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| r.try_get("event_uuid").map_err(StoreError::from))
        .collect()
}

/// One row of the log, its change as `jsonb` gives it back.
#[derive(Debug, Clone)]
struct LogRow {
    event_uuid: Uuid,
    version: i64,
    change: String,
}

async fn load_log(
    tx: &mut Transaction<'_, Postgres>,
    range: &Range,
) -> Result<Vec<LogRow>, StoreError> {
    let sql = format!(
        "SELECT event_uuid, version, change::text AS change FROM event_log WHERE {}
         ORDER BY event_uuid, version",
        range.condition()
    );
    let rows = range.bind(sqlx::query(&sql)).fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|r| {
            Ok(LogRow {
                event_uuid: r.try_get("event_uuid")?,
                version: r.try_get("version")?,
                change: r.try_get("change")?,
            })
        })
        .collect()
}

async fn load_views(
    tx: &mut Transaction<'_, Postgres>,
    range: &Range,
) -> Result<BTreeMap<Uuid, EventState>, StoreError> {
    let sql = format!(
        "SELECT {} FROM events WHERE {}",
        store::VIEW_COLUMNS,
        range.condition()
    );
    let rows = range.bind(sqlx::query(&sql)).fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|r| store::view_from_row(r).map(|s| (s.event_uuid, s)))
        .collect()
}

/// What one batch found, and what a repair writes.
#[derive(Debug, Default)]
struct Comparison {
    events: u64,
    changes: u64,
    /// In `event_uuid` order.
    findings: Vec<Finding>,
    /// Rebuilt states of the differing and missing events.
    replace: Vec<EventState>,
    /// Events with a view row and no log.
    remove: Vec<Uuid>,
}

/// Folds each event's `log` rows (sorted by event, then version) and compares the result with
/// its row in `views`.
fn compare(log: Vec<LogRow>, mut views: BTreeMap<Uuid, EventState>) -> Comparison {
    let mut c = Comparison {
        changes: log.len() as u64,
        ..Comparison::default()
    };
    let mut findings: BTreeMap<Uuid, Finding> = BTreeMap::new();
    for (event_uuid, rows) in by_event(log) {
        c.events += 1;
        let view = views.remove(&event_uuid);
        let finding = |kind, detail| Finding {
            event_uuid,
            kind,
            detail,
        };
        let found = match rebuild_one(event_uuid, &rows) {
            Err(why) => Some(finding(FindingKind::Broken, why)),
            Ok(rebuilt) => match view {
                None => {
                    c.replace.push(rebuilt);
                    Some(finding(FindingKind::Missing, "no view row".into()))
                }
                Some(v) if v != rebuilt => {
                    let fields = differing_fields(&v, &rebuilt).join(", ");
                    c.replace.push(rebuilt);
                    Some(finding(FindingKind::Differs, fields))
                }
                Some(_) => None,
            },
        };
        if let Some(f) = found {
            findings.insert(event_uuid, f);
        }
    }
    for event_uuid in views.into_keys() {
        c.events += 1;
        c.remove.push(event_uuid);
        findings.insert(
            event_uuid,
            Finding {
                event_uuid,
                kind: FindingKind::Extra,
                detail: "no log".into(),
            },
        );
    }
    c.findings = findings.into_values().collect();
    c
}

/// Groups log rows (sorted by event) by event.
fn by_event(log: Vec<LogRow>) -> Vec<(Uuid, Vec<LogRow>)> {
    let mut out: Vec<(Uuid, Vec<LogRow>)> = Vec::new();
    for row in log {
        match out.last_mut() {
            Some((u, rows)) if *u == row.event_uuid => rows.push(row),
            _ => out.push((row.event_uuid, vec![row])),
        }
    }
    out
}

/// The fold of one event's log rows, or why there is none.
fn rebuild_one(event_uuid: Uuid, rows: &[LogRow]) -> Result<EventState, String> {
    let changes = rows
        .iter()
        .map(|r| {
            pyjson::parse_str(&r.change)
                .map(|v: Value| (r.version, v))
                .map_err(|e| format!("version {}: the change does not parse: {e}", r.version))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match projection::fold(event_uuid, &changes) {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err("the log is empty".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The names of the columns in which `view` and `rebuilt` differ.
fn differing_fields(view: &EventState, rebuilt: &EventState) -> Vec<&'static str> {
    let checks = [
        ("version", view.version != rebuilt.version),
        ("user", view.user != rebuilt.user),
        ("action", view.action != rebuilt.action),
        ("app", view.app != rebuilt.app),
        ("context", view.context != rebuilt.context),
        ("client_ip", view.client_ip != rebuilt.client_ip),
        ("created", view.created != rebuilt.created),
        ("expires", view.expires != rebuilt.expires),
        ("brand", view.brand != rebuilt.brand),
    ];
    checks
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
}

/// Writes a batch's repairs (see [`run`] on the locks) and returns the rows changed.
async fn repair(
    tx: &mut Transaction<'_, Postgres>,
    c: &Comparison,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    if c.replace.is_empty() && c.remove.is_empty() {
        return Ok(0);
    }
    let mut locked: Vec<Uuid> = c.replace.iter().map(|s| s.event_uuid).collect();
    locked.extend(&c.remove);
    locked.sort_unstable();
    sqlx::query(
        "SELECT event_uuid FROM events WHERE event_uuid = ANY($1) ORDER BY event_uuid FOR UPDATE",
    )
    .bind(&locked)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM events WHERE event_uuid = ANY($1)")
        .bind(&c.remove)
        .execute(&mut **tx)
        .await?;
    store::upsert_views(tx, c.replace.iter(), now).await?;
    // The upsert keeps `created` on conflict (the processor never changes it); a damaged one
    // is put right here.
    let (uuids, created): (Vec<Uuid>, Vec<DateTime<Utc>>) =
        c.replace.iter().map(|s| (s.event_uuid, s.created)).unzip();
    sqlx::query(
        "UPDATE events SET created = t.created
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS t(u, created)
         WHERE event_uuid = t.u AND events.created IS DISTINCT FROM t.created",
    )
    .bind(&uuids)
    .bind(&created)
    .execute(&mut **tx)
    .await?;
    Ok((c.replace.len() + c.remove.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drf::validate::ValidBody;
    use chrono::TimeZone;
    use serde_json::json;

    fn body(app: &str) -> ValidBody {
        ValidBody {
            user: Some(json!({"pk": 1})),
            action: "login".into(),
            app: app.into(),
            context: None,
            client_ip: None,
            expires: None,
            brand: None,
        }
    }

    /// An event with `versions` changes: its log rows (as the store writes them) and its state.
    fn event(versions: i64) -> (Vec<LogRow>, EventState) {
        let u = Uuid::new_v4();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 20, 0, 0).unwrap();
        let mut state = None;
        let mut rows = Vec::new();
        for v in 1..=versions {
            let a = projection::apply(u, state.as_ref(), &body(&format!("app{v}")), now);
            rows.push(LogRow {
                event_uuid: u,
                version: v,
                change: a.change.to_string(),
            });
            state = Some(a.state);
        }
        (rows, state.expect("at least one version"))
    }

    fn sorted(mut events: Vec<(Vec<LogRow>, EventState)>) -> Vec<(Vec<LogRow>, EventState)> {
        events.sort_by_key(|(_, s)| s.event_uuid);
        events
    }

    #[test]
    fn a_view_that_is_the_fold_has_no_findings() {
        let events = sorted(vec![event(1), event(3), event(2)]);
        let log: Vec<LogRow> = events.iter().flat_map(|(r, _)| r.clone()).collect();
        let views = events
            .iter()
            .map(|(_, s)| (s.event_uuid, s.clone()))
            .collect();
        let c = compare(log, views);
        assert_eq!((c.events, c.changes), (3, 6));
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert!(c.replace.is_empty() && c.remove.is_empty());
    }

    #[test]
    fn differing_missing_extra_and_broken_events_are_told_apart() {
        let [(tampered_log, tampered), (missing_log, missing), (_, extra), (broken_log, broken)] =
            [event(2), event(1), event(1), event(2)];
        let mut log = tampered_log;
        log.extend(missing_log);
        // A gap: version 2 without version 1.
        log.push(broken_log[1].clone());
        // The log is read in (event, version) order.
        log.sort_by_key(|row| (row.event_uuid, row.version));
        let mut wrong = tampered.clone();
        wrong.app = "x".into();
        wrong.created += chrono::Duration::seconds(1);
        let views = BTreeMap::from([
            (tampered.event_uuid, wrong),
            (extra.event_uuid, extra.clone()),
            (broken.event_uuid, broken.clone()),
        ]);
        let c = compare(log, views);
        assert_eq!((c.events, c.changes), (4, 4));
        // Findings come in event order; the events' ids are random.
        let mut kinds: Vec<(Uuid, FindingKind)> =
            c.findings.iter().map(|f| (f.event_uuid, f.kind)).collect();
        kinds.sort_by_key(|k| k.0);
        let mut expected = vec![
            (tampered.event_uuid, FindingKind::Differs),
            (missing.event_uuid, FindingKind::Missing),
            (extra.event_uuid, FindingKind::Extra),
            (broken.event_uuid, FindingKind::Broken),
        ];
        expected.sort_by_key(|k| k.0);
        assert_eq!(kinds, expected);
        let detail = |kind| {
            c.findings
                .iter()
                .find(|f| f.kind == kind)
                .map(|f| f.detail.clone())
                .unwrap_or_default()
        };
        assert_eq!(detail(FindingKind::Differs), "app, created");
        assert!(detail(FindingKind::Broken).contains("version 2 follows version 0"));
        let mut replace = c.replace.clone();
        replace.sort_by_key(|s| s.event_uuid);
        let mut expected_replace = vec![tampered, missing];
        expected_replace.sort_by_key(|s| s.event_uuid);
        assert_eq!(replace, expected_replace);
        assert_eq!(c.remove, [extra.event_uuid]);
    }

    #[test]
    fn a_change_that_does_not_parse_makes_the_event_broken() {
        let (mut rows, state) = event(1);
        rows[0].change = "{not json".into();
        let c = compare(rows, BTreeMap::from([(state.event_uuid, state.clone())]));
        assert_eq!(c.findings.len(), 1);
        assert_eq!(c.findings[0].kind, FindingKind::Broken);
        assert!(c.findings[0]
            .detail
            .starts_with("version 1: the change does not parse"));
        assert!(c.replace.is_empty() && c.remove.is_empty(), "never written");
    }

    #[test]
    fn the_report_counts_keeps_a_sample_and_computes_rates() {
        let (rows, state) = event(2);
        let c = compare(rows, BTreeMap::new());
        let mut r = Report::default();
        r.add(&c, 1);
        r.add(&c, 1);
        assert_eq!((r.events, r.changes, r.batches, r.missing), (2, 4, 2, 2));
        assert_eq!(r.first.len(), 1);
        assert_eq!(r.first[0].event_uuid, state.event_uuid);
        assert_eq!(r.differences(), 2);
        assert_eq!(r.unrepaired(), 2);
        r.repaired = 2;
        assert_eq!(r.unrepaired(), 0);
        assert_eq!(r.events_per_second(), 0.0);
        r.elapsed = Duration::from_millis(500);
        assert_eq!(r.events_per_second(), 4.0);
        assert_eq!(r.changes_per_second(), 8.0);
    }

    #[test]
    fn the_first_batch_includes_its_lower_bound_and_the_others_do_not() {
        let first = Range {
            after: None,
            upto: Uuid::nil(),
        };
        assert_eq!(first.condition(), "event_uuid >= $1 AND event_uuid <= $2");
        let next = Range {
            after: Some(Uuid::nil()),
            upto: Uuid::nil(),
        };
        assert_eq!(next.condition(), "event_uuid > $1 AND event_uuid <= $2");
    }
}
