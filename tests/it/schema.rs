//! The schema across releases, and the applied offsets.
//!
//! - Expand/contract: the previous release's migrations and write path
//!   (`tests/fixtures/previous-release/`) run against a database this release migrated, as they
//!   do during a rolling deploy (both releases side by side) and after a rollback; its writes are
//!   then read by this release's processor.
//! - Applied offsets: records read again after the retention pruned their stored replies (a
//!   consumer group that lost its offsets) are answered and not applied again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_updater::domain::auth::AuthMode;
use event_updater::domain::command::{decode, Incoming};
use event_updater::domain::decide::ALREADY_APPLIED;
use event_updater::store;
use event_updater::Application;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::support::{feed, Received, Services, TestApp};

/// The previous release's files.
fn previous_release() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release")
}

/// A fresh, empty database on `base`; its URL.
async fn empty_database(base: &str) -> (String, String) {
    let name = format!("event_updater_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create database");
    (format!("{base}/{name}"), name)
}

async fn drop_database(base: &str, name: &str) {
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

/// One command as the previous release's processor handled it: its log row, its event's view
/// after it (with the version read at) and its stored reply, from `source` (partition, offset).
struct PreviousWrite {
    event: Uuid,
    version: i64,
    read_version: i64,
    request_id: String,
    change: Value,
    view: Value,
    fingerprint: [u8; 32],
    status: i16,
    reply: Vec<u8>,
    topic: String,
    partition: i32,
    offset: i64,
}

impl PreviousWrite {
    /// Sends `tests/fixtures/previous-release/write_batch.sql` with the 29 parameters bound in
    /// the types the previous release bound (`src/store/mod.rs` at 8d52998: `LogRows`,
    /// `ViewRows`, `ReplyRows`, then the write time).
    async fn run(&self, pool: &PgPool, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let sql = std::fs::read_to_string(previous_release().join("write_batch.sql"))
            .expect("the previous release's write statement");
        let v = &self.view;
        let text = |k: &str| v[k].to_string();
        let time = |k: &str| -> DateTime<Utc> { v[k].as_str().unwrap().parse().unwrap() };
        sqlx::query(&sql)
            // event_log: uuid, version, request_id, change (JSON text), topic, partition, offset
            .bind(vec![self.event])
            .bind(vec![self.version])
            .bind(vec![self.request_id.clone()])
            .bind(vec![self.change.to_string()])
            .bind(vec![self.topic.clone()])
            .bind(vec![self.partition])
            .bind(vec![self.offset])
            // events: uuid, version, read version, user, action, app, context, client_ip,
            // created, expires, brand
            .bind(vec![self.event])
            .bind(vec![self.version])
            .bind(vec![self.read_version])
            .bind(vec![text("user")])
            .bind(vec![v["action"].as_str().unwrap().to_string()])
            .bind(vec![v["app"].as_str().unwrap().to_string()])
            .bind(vec![text("context")])
            .bind(vec![None::<String>])
            .bind(vec![time("created")])
            .bind(vec![time("expires")])
            .bind(vec![text("brand")])
            // command_replies: scope (empty: authentication disabled), request_id,
            // fingerprint, event_uuid, status, version, reply bytes, topic, partition, offset
            .bind(vec![Vec::<u8>::new()])
            .bind(vec![self.request_id.clone()])
            .bind(vec![self.fingerprint.to_vec()])
            .bind(vec![Some(self.event)])
            .bind(vec![self.status])
            .bind(vec![Some(self.version)])
            .bind(vec![self.reply.clone()])
            .bind(vec![self.topic.clone()])
            .bind(vec![self.partition])
            .bind(vec![self.offset])
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
    }
}

/// A command value for `event`.
fn command(id: &str, event: Uuid, n: u64, expected_version: Option<i64>) -> Value {
    let mut c = json!({"request_id": id, "event_uuid": event.to_string(),
        "body": {"action": "login", "app": "authentik.core", "context": {"n": n}}});
    if let Some(v) = expected_version {
        c["expected_version"] = json!(v);
    }
    c
}

/// The fingerprint this release computes for `value` (the previous release stored the same).
fn fingerprint(value: &Value, event: Uuid) -> [u8; 32] {
    let m = Incoming {
        topic: "t".into(),
        key: Some(event.to_string().into_bytes()),
        payload: Some(value.to_string().into_bytes()),
        ..Incoming::default()
    };
    decode(&m, 1 << 20, AuthMode::Disabled).fingerprint
}

/// Publishes `value` to partition 0 of the command topic, keyed by `event`; its offset.
async fn publish_to_partition_0(app: &TestApp, event: Uuid, value: &Value) -> i64 {
    let key = event.to_string();
    let payload = value.to_string();
    let record = FutureRecord::to(&app.cfg.command_topic)
        .key(&key)
        .payload(&payload)
        .partition(0);
    app.producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| e)
        .expect("command delivered")
        .offset
}

async fn applied_offset(pool: &PgPool, topic: &str, partition: i32) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT applied_offset FROM applied_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
    .expect("applied offset")
}

#[tokio::test]
async fn the_previous_release_keeps_writing_and_starting_against_this_releases_schema() {
    let services = Services::start().await;
    let base = services.database_base.clone();
    let (url, name) = empty_database(&base).await;
    let topic = format!("test-{}-commands", Uuid::new_v4().simple());
    let event = Uuid::new_v4();
    let now = Utc::now();

    // The previous release migrates the database and applies a create (offset 0).
    let pool = PgPool::connect(&url).await.expect("database");
    Migrator::new(previous_release().join("migrations"))
        .await
        .expect("the previous release's migrations")
        .run(&pool)
        .await
        .expect("the previous release migrates an empty database");
    let first = command("prev-1", event, 1, Some(0));
    let created = json!({"pk": event.to_string(), "user": {}, "action": "login",
        "app": "authentik.core", "context": {"n": 1}, "client_ip": null,
        "created": "2026-12-01T10:00:00Z", "expires": "2027-12-01T10:00:00Z", "brand": {}});
    let reply_1 = json!({"request_id": "prev-1", "event_uuid": event.to_string(), "status": 201,
        "version": 1, "body": created});
    let write_1 = PreviousWrite {
        event,
        version: 1,
        read_version: 0,
        request_id: "prev-1".into(),
        change: json!({"user": {}, "action": "login", "app": "authentik.core", "context": {"n": 1},
            "client_ip": null, "created": "2026-12-01T10:00:00Z",
            "expires": "2027-12-01T10:00:00Z", "brand": {}}),
        view: created.clone(),
        fingerprint: fingerprint(&first, event),
        status: 201,
        reply: reply_1.to_string().into_bytes(),
        topic: topic.clone(),
        partition: 0,
        offset: 0,
    };
    write_1
        .run(&pool, now)
        .await
        .expect("the previous release writes");

    // This release deploys: it migrates the database (and, for this test, creates the topics).
    let mut app = TestApp::resources_on(services, |c| {
        c.database_url = url.clone();
        c.command_topic = topic.clone();
        c.auth_mode = AuthMode::Disabled;
    })
    .await;
    assert_eq!(
        applied_offset(&pool, &topic, 0).await,
        Some(0),
        "the migration records what was applied before it"
    );

    // A processor of the previous release still runs: its write path keeps working on the new
    // schema (an update at offset 1), and records its offset too.
    let second = command("prev-2", event, 2, Some(1));
    let mut updated = created.clone();
    updated["context"] = json!({"n": 2});
    let reply_2 = json!({"request_id": "prev-2", "event_uuid": event.to_string(), "status": 200,
        "version": 2, "body": updated});
    let write_2 = PreviousWrite {
        version: 2,
        read_version: 1,
        request_id: "prev-2".into(),
        change: json!({"action": "login", "app": "authentik.core", "context": {"n": 2}}),
        view: updated.clone(),
        fingerprint: fingerprint(&second, event),
        status: 200,
        reply: reply_2.to_string().into_bytes(),
        offset: 1,
        ..write_1
    };
    write_2
        .run(&pool, now)
        .await
        .expect("the previous release's write path works against the new schema");
    assert_eq!(app.log_len(event).await, 2);
    let view = store::load_view(&pool, event)
        .await
        .expect("view")
        .expect("the event exists");
    assert_eq!(view.version, 2);
    assert_eq!(view.context, json!({"n": 2}));
    assert_eq!(applied_offset(&pool, &topic, 0).await, Some(1));

    // The previous release restarts (a rollback): its migrator starts against the database this
    // release migrated, with this release's newer migrations it does not know.
    let previous = Migrator::new(previous_release().join("migrations"))
        .await
        .expect("the previous release's migrations");
    store::migrate_with(&pool, previous)
        .await
        .expect("the previous release starts against the newer schema");
    // A known migration whose text changed is still refused.
    let tampered = tempfile_copy_with_a_changed_migration();
    let changed = Migrator::new(tampered.as_path()).await.expect("migrations");
    let refused = store::migrate_with(&pool, changed).await;
    assert!(
        matches!(
            refused,
            Err(store::StoreError::Migrate(MigrateError::VersionMismatch(_)))
        ),
        "a changed migration was not refused: {refused:?}"
    );
    std::fs::remove_dir_all(&tampered).expect("remove the copy");
    // The refused migrator left no lock behind to hold the next start back.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .expect("locks");
    assert_eq!(locks, 0, "the refused migrator still holds its lock");

    // This release's processor reads what the previous one wrote: the two records redelivered
    // get their stored replies byte for byte, and a new update follows on at version 3.
    let third = command("new-3", event, 3, Some(2));
    for (value, offset) in [(&first, 0), (&second, 1), (&third, 2)] {
        assert_eq!(publish_to_partition_0(&app, event, value).await, offset);
    }
    app.app = Some(
        Application::build(app.cfg.clone())
            .await
            .expect("the processor starts"),
    );
    let replies: Vec<Received> = app.replies(3).await;
    assert_eq!(replies[0].raw, reply_1.to_string().into_bytes());
    assert_eq!(replies[1].raw, reply_2.to_string().into_bytes());
    assert_eq!(replies[2].status(), 200, "{:?}", replies[2].value);
    assert_eq!(replies[2].value["version"], 3);
    assert_eq!(replies[2].body()["context"], json!({"n": 3}));
    assert_eq!(app.log_len(event).await, 3);
    app.assert_view_is_fold_of_log().await;
    assert_eq!(applied_offset(&pool, &topic, 0).await, Some(2));

    pool.close().await;
    app.finish().await;
    drop_database(&base, &name).await;
}

/// A copy of the previous release's migrations in a new directory, with one of them changed
/// (a comment added); its path.
fn tempfile_copy_with_a_changed_migration() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("event-updater-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    for entry in std::fs::read_dir(previous_release().join("migrations")).expect("migrations") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("migration");
        let file = path.file_name().expect("name").to_owned();
        if file.to_string_lossy().starts_with("20261127000002") {
            text.push_str("-- changed after it was applied\n");
        }
        std::fs::write(dir.join(file), text).expect("copy");
    }
    dir
}

#[tokio::test]
async fn records_read_again_after_their_replies_were_pruned_are_answered_and_not_applied_again() {
    let mut app = TestApp::spawn_with(|c| {
        c.idempotency_retention = Duration::from_secs(3_600);
        c.idempotency_prune_interval = Duration::from_millis(200);
    })
    .await;
    // Two events, four commands each: a create (expected_version 0), then plain PUTs.
    let events = [Uuid::new_v4(), Uuid::new_v4()];
    let mut sent = Vec::new();
    for n in 0..4u64 {
        for (e, event) in events.iter().enumerate() {
            let id = format!("{}-{e}-{n}", if n == 3 { "young" } else { "old" });
            sent.push((id.clone(), command(&id, *event, n, (n == 0).then_some(0))));
        }
    }
    let mut first = std::collections::HashMap::new();
    for (id, c) in &sent {
        let r = app.call(c).await;
        assert!(matches!(r.status(), 200 | 201), "{:?}", r.value);
        first.insert(id.clone(), r);
    }

    // The retention prunes the stored replies of the old commands (aged past the window).
    sqlx::query(
        "UPDATE command_replies SET handled_at = handled_at - interval '2 hours' WHERE request_id LIKE 'old-%'",
    )
    .execute(&app.pool)
    .await
    .expect("age");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM command_replies WHERE request_id LIKE 'old-%'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count");
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stored replies were not pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_before = log_rows(&app.pool).await;
    let views_before = view_rows(&app.pool).await;
    assert_eq!(log_before.len(), 8);

    // The consumer group's offsets are lost (here: a new group id): the processor reads the
    // command topic again from the earliest offset.
    app.stop().await;
    app.cfg.kafka_group_id = format!("{}-again", app.cfg.kafka_group_id);
    let restarted = Application::build(app.cfg.clone())
        .await
        .expect("the processor starts again");
    app.pool = restarted.pool().clone();
    app.app = Some(restarted);
    let mut again = std::collections::HashMap::new();
    for r in app.replies(sent.len()).await {
        let id = r.value["request_id"]
            .as_str()
            .expect("request_id")
            .to_string();
        again.insert(id, r);
    }
    for (id, c) in &sent {
        let r = &again[id];
        if id.starts_with("young") {
            // Its stored reply is still kept: the same bytes.
            assert_eq!(r.raw, first[id].raw, "{id}");
            continue;
        }
        assert_eq!(r.status(), 409, "{id}: {:?}", r.value);
        let detail = r.body()["detail"].as_str().expect("detail");
        assert!(detail.starts_with(ALREADY_APPLIED), "{id}: {detail}");
        let event: Uuid = c["event_uuid"].as_str().unwrap().parse().unwrap();
        assert_eq!(r.body()["current_version"], 4, "{id} ({event})");
    }

    // Nothing was applied again: the log and the view are as they were.
    assert_eq!(log_rows(&app.pool).await, log_before);
    assert_eq!(view_rows(&app.pool).await, views_before);
    app.assert_view_is_fold_of_log().await;

    // Yet every change was published again, the same bytes: the young commands' from their
    // stored replies, the old ones' found in the log by their record.
    let topic = app.cfg.changes_topic.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = feed::read_topic(&app.cfg, &topic).await.expect("changes");
        if records.len() >= 2 * sent.len() || tokio::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = feed::check_changes(&records).expect("the feed is whole");
    assert_eq!(
        (report.records, report.repeats, report.distinct()),
        (16, 8, 8)
    );
    app.finish().await;
}

/// Every log row: (event, version, request id, change, source offset).
async fn log_rows(pool: &PgPool) -> Vec<(Uuid, i64, String, String, i64)> {
    sqlx::query(
        "SELECT event_uuid, version, request_id, change::text AS change, source_offset FROM event_log ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("log")
    .iter()
    .map(|r| {
        (
            r.get("event_uuid"),
            r.get("version"),
            r.get("request_id"),
            r.get("change"),
            r.get("source_offset"),
        )
    })
    .collect()
}

/// Every view row as text, with its version and last update time.
async fn view_rows(pool: &PgPool) -> Vec<(Uuid, i64, String)> {
    sqlx::query("SELECT event_uuid, version, row_to_json(e)::text AS row FROM events e ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("views")
        .iter()
        .map(|r| (r.get("event_uuid"), r.get("version"), r.get("row")))
        .collect()
}

/// Runs `event-updater <args>` on `app`'s database; (exit success, stdout).
async fn run_binary(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = app
        .binary()
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_recreated_command_topic_is_applied_again_once_its_offsets_are_reset() {
    let mut app = TestApp::spawn().await;
    // Test setup: the offsets stored for the topic's previous incarnation, far above where the
    // topic (created again, restarting at 0) is now.
    sqlx::query(
        "INSERT INTO applied_offsets (topic, partition, applied_offset, updated_at)
         SELECT $1, p, 1000000, now() FROM generate_series(0, $2 - 1) AS p",
    )
    .bind(&app.cfg.command_topic)
    .bind(app.cfg.topic_partitions)
    .execute(&app.pool)
    .await
    .expect("offsets of the previous incarnation");
    let event = Uuid::new_v4();
    let r = app.call(&command("first", event, 1, None)).await;
    assert_eq!(r.status(), 409, "{:?}", r.value);
    assert!(r.body()["detail"]
        .as_str()
        .unwrap()
        .starts_with(ALREADY_APPLIED));
    assert_eq!(app.log_len(event).await, 0, "applied below a stored offset");

    // The operator's way out: stop, reset the topic's offsets, start again.
    app.stop().await;
    let (listed, text) = run_binary(&app, &["offsets", "list"]).await;
    assert!(listed, "offsets list failed");
    assert!(
        text.contains(&app.cfg.command_topic) && text.contains("1000000"),
        "{text}"
    );
    let topic = app.cfg.command_topic.clone();
    let (reset, text) = run_binary(&app, &["offsets", "reset", "--topic", &topic]).await;
    assert!(reset, "offsets reset failed: {text}");
    assert!(
        text.contains(&format!(
            "{} partition(s) of {topic:?} reset",
            app.cfg.topic_partitions
        )),
        "{text}"
    );
    let restarted = Application::build(app.cfg.clone())
        .await
        .expect("the processor starts again");
    app.pool = restarted.pool().clone();
    app.app = Some(restarted);

    // Sent again (its 409 was not stored), the command is applied, and so is the next.
    let r = app.call(&command("first", event, 1, None)).await;
    assert_eq!(r.status(), 201, "{:?}", r.value);
    let r = app.call(&command("second", event, 2, Some(1))).await;
    assert_eq!(r.status(), 200, "{:?}", r.value);
    assert_eq!(app.log_len(event).await, 2);
    app.assert_view_is_fold_of_log().await;
    app.finish().await;
}
