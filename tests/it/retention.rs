//! Retention of stored replies (`IDEMPOTENCY_RETENTION`, src/store/retention.rs): replies past the
//! window are deleted, younger ones stay and still answer redeliveries byte for byte, a request
//! id replayed after the window is handled as a new command, only one pruner deletes at a time,
//! and the tables' sizes and the pruned count are on `/metrics`.
//!
//! Also, `#[ignore]`d, the measurement of the bytes stored per 1,000,000 commands:
//! `cargo test --test it -- --ignored --nocapture retention::bytes_stored_per_million_commands`.

use std::time::Duration;

use crate::support::{http_get, TestApp};
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

/// How long the test waits for something that should happen within a few prune intervals.
const PATIENCE: Duration = Duration::from_secs(30);

async fn count(app: &TestApp, pattern: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM command_replies WHERE request_id LIKE $1")
        .bind(pattern)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// The value of the series `series` (name and labels, exactly as rendered) in `/metrics`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn replies_past_the_window_are_pruned_and_younger_ones_still_answer_redeliveries() {
    let app = TestApp::spawn_with(|c| {
        c.idempotency_retention = Duration::from_secs(3_600);
        c.idempotency_prune_interval = Duration::from_millis(200);
    })
    .await;
    let event = Uuid::new_v4().to_string();
    let command = |id: &str, n: u64, expected_version: Option<i64>| {
        let mut c = json!({"request_id": id, "event_uuid": event,
            "body": {"action": "login", "app": "authentik.core", "user": {"pk": 1}, "context": {"n": n}}});
        if let Some(v) = expected_version {
            c["expected_version"] = json!(v);
        }
        c
    };

    // Six commands on one event: versions 1..6; `old-0` creates it with expected_version 0.
    let ids = ["old-0", "old-1", "old-2", "young-0", "young-1", "young-2"];
    let mut first = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let expected = (i == 0).then_some(0);
        let r = app.call(&command(id, i as u64, expected)).await;
        assert_eq!(r.status(), if i == 0 { 201 } else { 200 }, "{:?}", r.value);
        assert_eq!(r.value["version"], json!(i + 1));
        first.push(r);
    }
    assert_eq!(count(&app, "%").await, 6);

    // Another processor pruning: it holds the prune lock, so this one deletes nothing.
    let mut other = sqlx::PgConnection::connect(&app.cfg.database_url)
        .await
        .expect("a second session");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(event_updater::store::retention::PRUNE_LOCK_KEY)
        .execute(&mut other)
        .await
        .expect("the prune lock");

    // Age the first three past the one-hour window (test setup: the clock cannot be moved).
    let aged = sqlx::query(
        "UPDATE command_replies SET handled_at = handled_at - interval '2 hours' WHERE request_id LIKE 'old-%'",
    )
    .execute(&app.pool)
    .await
    .expect("age")
    .rows_affected();
    assert_eq!(aged, 3);

    // Several prune intervals pass while the lock is held elsewhere: nothing is deleted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&app, "old-%").await,
        3,
        "pruned while another session held the prune lock"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(event_updater::store::retention::PRUNE_LOCK_KEY)
        .execute(&mut other)
        .await
        .expect("unlock");
    other.close().await.expect("close");

    // Once the lock is free, the aged replies go and the young ones stay.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count(&app, "old-%").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored replies past the window were not pruned within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&app, "young-%").await, 3, "a young reply was pruned");
    let event_uuid: Uuid = event.parse().unwrap();
    assert_eq!(app.log_len(event_uuid).await, 6, "the log is never pruned");

    // A young request id redelivered: its stored reply, byte for byte, and no new version.
    let again = app.call(&command("young-1", 4, None)).await;
    assert_eq!(again.raw, first[4].raw);
    assert_eq!(app.log_len(event_uuid).await, 6);
    // Other content under a young request id is still a 422.
    let reused = app.call(&command("young-2", 99, None)).await;
    assert_eq!(reused.status(), 422, "{:?}", reused.value);

    // Request ids replayed after the window are new commands: the one carrying
    // expected_version 0 now conflicts, the plain PUT applies again as version 7.
    let replayed = app.call(&command("old-0", 0, Some(0))).await;
    assert_eq!(replayed.status(), 409, "{:?}", replayed.value);
    assert_eq!(replayed.body()["current_version"], 6);
    let replayed = app.call(&command("old-1", 1, None)).await;
    assert_eq!(replayed.status(), 200, "{:?}", replayed.value);
    assert_eq!(replayed.value["version"], 7);
    assert_ne!(replayed.raw, first[1].raw);
    assert_eq!(app.log_len(event_uuid).await, 7);
    app.assert_view_is_fold_of_log().await;

    // The pruned count and the tables' sizes are exported.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = http_get(app.app.as_ref().unwrap().http_addr(), "/metrics").await;
        let pruned = metric(&text, "event_updater_replies_pruned_total");
        let sizes: Vec<Option<f64>> = ["event_log", "events", "command_replies"]
            .iter()
            .map(|t| {
                metric(
                    &text,
                    &format!("event_updater_table_bytes{{table=\"{t}\"}}"),
                )
            })
            .collect();
        if pruned.is_some_and(|p| p >= 3.0) && sizes.iter().all(|s| s.is_some_and(|b| b > 0.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pruned {pruned:?} (at least 3 expected), table sizes {sizes:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.finish().await;
}

/// The bytes PostgreSQL holds per 1,000,000 commands, extrapolated from `N` typical commands
/// (every one valid, ten per event, a 36-character request id) applied through the store's
/// batch path ([`event_updater::store::apply_batch`], batches of 500, as the processor does)
/// into a fresh database, then `VACUUM (ANALYZE)`: `pg_total_relation_size` of each table
/// (heap, indexes, TOAST, free-space and visibility maps). Needs PostgreSQL only.
#[tokio::test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn bytes_stored_per_million_commands() {
    use event_updater::domain::auth::AuthMode;
    use event_updater::domain::command::{self, Incoming};
    use event_updater::domain::decide::{BatchSettings, Source};
    use event_updater::store;

    const N: u64 = 100_000;
    const PER_EVENT: u64 = 10;
    const BATCH: u64 = 500;
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("event_updater_size_{}", Uuid::new_v4().simple());
    let pool = store::connect(&format!("{base}/{db}"), 2)
        .await
        .expect("database");
    let events: Vec<Uuid> = (0..N / PER_EVENT).map(|_| Uuid::new_v4()).collect();
    let mut i = 0;
    while i < N {
        // One write time per batch, as the processor stamps a batch.
        let now = chrono::Utc::now();
        let batch: Vec<_> = (i..N.min(i + BATCH))
            .map(|j| {
                // Commands interleave events, as many producers would.
                let event = events[(j % (N / PER_EVENT)) as usize];
                let action = ["login", "logout", "model_updated"][(j % 3) as usize];
                let value: Value = json!({
                    "request_id": Uuid::new_v4().to_string(),
                    "event_uuid": event.to_string(),
                    "body": {"action": action,
                             "app": "authentik.core", "user": {"pk": 1, "username": "akadmin"},
                             "context": {"n": j}, "client_ip": "10.0.0.1", "brand": {}}
                });
                let incoming = Incoming {
                    topic: "event-update-commands".into(),
                    partition: (j % 6) as i32,
                    offset: j as i64,
                    key: Some(event.to_string().into_bytes()),
                    payload: Some(value.to_string().into_bytes()),
                    ..Incoming::default()
                };
                let source = Source {
                    topic: incoming.topic.clone(),
                    partition: incoming.partition,
                    offset: incoming.offset,
                };
                (
                    command::decode(&incoming, 1_048_576, AuthMode::Disabled),
                    source,
                )
            })
            .collect();
        let outcomes = store::apply_batch(
            &pool,
            &batch,
            BatchSettings {
                auth_mode: AuthMode::Disabled,
                max_reply_bytes: 1_000_000,
            },
            now,
        )
        .await
        .expect("batch applied");
        assert!(outcomes.iter().all(|o| o.status == 200 || o.status == 201));
        i += BATCH;
    }
    sqlx::query("VACUUM (ANALYZE) event_log, events, command_replies")
        .execute(&pool)
        .await
        .expect("vacuum");
    let mut total = 0i64;
    println!(
        "bytes stored for {N} commands over {} events, and per 1,000,000 commands (linear):",
        N / PER_EVENT
    );
    for table in ["event_log", "command_replies", "events"] {
        let (bytes, heap, indexes): (i64, i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size($1::regclass), pg_relation_size($1::regclass), pg_indexes_size($1::regclass)",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .expect("size");
        total += bytes;
        println!(
            "  {table:16} {bytes:>12} B  (heap {heap}, indexes {indexes})  -> {:>6.0} MiB per 1M commands, {:.0} B per command",
            bytes as f64 * (1_000_000.0 / N as f64) / 1_048_576.0,
            bytes as f64 / N as f64
        );
        let indexes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = $1::regclass ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .expect("index sizes");
        for (index, bytes) in indexes {
            println!(
                "    index {index:30} {bytes:>10} B, {:.1} B per command",
                bytes as f64 / N as f64
            );
        }
    }
    println!(
        "  total            {total:>12} B  -> {:.0} MiB per 1M commands (events grows with events, not commands: {} here)",
        total as f64 * (1_000_000.0 / N as f64) / 1_048_576.0,
        N / PER_EVENT
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM command_replies")
            .fetch_one(&pool)
            .await
            .expect("count"),
        N as i64
    );
    pool.close().await;
    if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}
