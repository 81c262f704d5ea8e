//! PostgreSQL failing the processor's statements, for real: a row lock held by a session that
//! never commits (broken by the processor's `lock_timeout`, or the holder ended by the server's
//! `idle_in_transaction_session_timeout` when it is a session like the processor's own), and
//! statements that fail every time for one command (a trigger installed in the test's own
//! database raises the SQLSTATE a command names: 57014 statement timeout, 53200 out of memory,
//! 42883 undefined function, 22P02 invalid text). Each such command is answered (500 and a dead
//! letter, or 400 for refused data) with a fixed text and its SQLSTATE, never PostgreSQL's own
//! message; the commands after it, in the same partition, are applied in order.

use std::time::Duration;

use event_updater::domain::reply::header;
use event_updater::pipeline::consumer::{
    DATABASE_FAILED, DATABASE_FAILED_REASON, DATABASE_REFUSED,
};
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use crate::support::{Received, TestApp};

/// The text the test's trigger puts in PostgreSQL's error message: it must reach no client.
const RAW_TEXT: &str = "raw-postgres-text: relation secret_internal_table";

/// The `app` prefix that makes the trigger fail a command's log row with the SQLSTATE after it.
const FAILS: &str = "fails-";

/// A command on `event` with `request_id` `id` and `app`.
fn command(event: Uuid, id: &str, app: &str) -> Value {
    json!({"request_id": id, "event_uuid": event.to_string(),
           "body": {"action": "model_updated", "app": app}})
}

/// The reply schema of docs/schema.
fn reply_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/reply.schema.json"),
        )
        .expect("schema"),
    )
    .expect("schema JSON");
    jsonschema::validator_for(&schema).expect("schema")
}

/// Asserts that `r` is the 500 of a command the database kept failing with `sqlstate`.
fn assert_database_failed(r: &Received, event: Uuid, sqlstate: &str) {
    assert_eq!(r.status(), 500, "{}", r.value);
    assert_eq!(r.value["event_uuid"], json!(event.to_string()));
    assert!(r.value.get("version").is_none(), "{}", r.value);
    let body = r.body().as_object().expect("an object body");
    assert_eq!(body.len(), 1, "only a detail: {}", r.value);
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.starts_with(DATABASE_FAILED), "{detail}");
    assert!(detail.contains(&format!("SQLSTATE {sqlstate}")), "{detail}");
    assert!(detail.contains("new request_id"), "{detail}");
    assert!(
        !detail.contains(RAW_TEXT),
        "PostgreSQL's text reached the client: {detail}"
    );
    let schema = reply_schema();
    let errors: Vec<String> = schema
        .iter_errors(&r.value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "the 500 fits the reply schema: {errors:?}"
    );
}

/// Asserts that `d` is the dead letter of the command `sent`, answered 500 for `sqlstate`.
fn assert_dead_letter(d: &Received, sent: &Value, sqlstate: &str) {
    let id = sent["request_id"].as_str().expect("id");
    assert_eq!(d.header(header::REQUEST_ID), Some(id), "{:?}", d.headers);
    assert_eq!(d.header(header::DLQ_STATUS), Some("500"), "{:?}", d.headers);
    let reason = d.header(header::DLQ_REASON).expect("dlq-reason");
    assert!(reason.starts_with(DATABASE_FAILED_REASON), "{reason}");
    assert!(reason.contains(&format!("SQLSTATE {sqlstate}")), "{reason}");
    assert!(!reason.contains(RAW_TEXT), "{reason}");
    assert_eq!(d.header(header::AUTHORIZATION), None);
    assert_eq!(
        serde_json::from_slice::<Value>(&d.raw).expect("the command"),
        *sent
    );
}

/// A command whose log row PostgreSQL fails every time with a SQLSTATE that says nothing about
/// the database being away (57014, 53200, 42883) is not retried forever: its batch is split, the
/// command alone is answered 500 (a fixed text and the SQLSTATE) and copied to the DLQ, and the
/// commands after it in the same partition are applied, in order. Data the database refuses
/// (22P02) gets its 400, also without PostgreSQL's text. The answers are stored: a redelivery
/// gets the same bytes and is not attempted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_database_keeps_failing_is_answered_500_and_dead_lettered_and_the_next_ones_are_applied(
) {
    let app = TestApp::spawn().await;
    for statement in [
        "CREATE SEQUENCE failing_writes",
        "CREATE FUNCTION fails_on_demand() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
             app text := NEW.change->>'app';
         BEGIN
             IF app LIKE 'fails-%' THEN
                 PERFORM nextval('failing_writes');
                 RAISE EXCEPTION 'raw-postgres-text: relation secret_internal_table for %', app
                     USING ERRCODE = substr(app, 7);
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER fails_on_demand BEFORE INSERT ON event_log
         FOR EACH ROW EXECUTE FUNCTION fails_on_demand()",
    ] {
        sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect(statement);
    }
    let event = Uuid::new_v4();
    // (request id, app): the failing ones between commands that must be applied.
    let plan = [
        ("r1", "a1".to_string()),
        ("f-57014", format!("{FAILS}57014")),
        ("r2", "a2".to_string()),
        ("f-53200", format!("{FAILS}53200")),
        ("r3", "a3".to_string()),
        ("f-42883", format!("{FAILS}42883")),
        ("r4", "a4".to_string()),
        ("f-22P02", format!("{FAILS}22P02")),
        ("r5", "a5".to_string()),
    ];
    let sent: Vec<Value> = plan.iter().map(|(id, a)| command(event, id, a)).collect();
    for c in &sent {
        app.send(c).await;
    }
    // One event, one partition: the replies come in the commands' order.
    let replies = app.replies(plan.len()).await;
    let got: Vec<(&str, u64, Option<u64>)> = replies
        .iter()
        .map(|r| {
            (
                r.value["request_id"].as_str().expect("id"),
                r.status(),
                r.value["version"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("r1", 201, Some(1)),
            ("f-57014", 500, None),
            ("r2", 200, Some(2)),
            ("f-53200", 500, None),
            ("r3", 200, Some(3)),
            ("f-42883", 500, None),
            ("r4", 200, Some(4)),
            ("f-22P02", 400, None),
            ("r5", 200, Some(5)),
        ]
    );
    for (i, code) in [(1, "57014"), (3, "53200"), (5, "42883")] {
        assert_database_failed(&replies[i], event, code);
    }
    let refused = replies[7].body()["detail"].as_str().expect("detail");
    assert!(refused.starts_with(DATABASE_REFUSED), "{refused}");
    assert!(refused.contains("SQLSTATE 22P02"), "{refused}");
    assert!(!refused.contains(RAW_TEXT), "PostgreSQL's text: {refused}");
    // The 500s' commands are on the DLQ, in order (the 400 for refused data is not).
    for (i, code) in [(1, "57014"), (3, "53200"), (5, "42883")] {
        let d = app.dead_letter().await;
        assert_dead_letter(&d, &sent[i], code);
    }
    let logged: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM event_log WHERE event_uuid = $1 ORDER BY version",
    )
    .bind(event)
    .fetch_all(&app.pool)
    .await
    .expect("log");
    assert_eq!(logged, ["r1", "r2", "r3", "r4", "r5"]);
    app.assert_view_is_fold_of_log().await;
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM failing_writes")
        .fetch_one(&app.pool)
        .await
        .expect("sequence");
    println!("the failing commands' log rows were attempted {attempts} times");
    // A redelivery gets the stored 500, byte for byte, and is not attempted again.
    app.send(&sent[1]).await;
    let again = app.reply().await;
    assert_eq!(again.raw, replies[1].raw);
    let after: i64 = sqlx::query_scalar("SELECT last_value FROM failing_writes")
        .fetch_one(&app.pool)
        .await
        .expect("sequence");
    assert_eq!(after, attempts, "the redelivery was attempted again");
    let addr = app.app.as_ref().expect("in process").http_addr();
    let metrics = crate::support::http_get(addr, "/metrics").await;
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("event_updater_db_failed_commands_total{sqlstate=\"57014\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(counted >= 1.0, "the failed command not counted:\n{metrics}");
    app.finish().await;
}

/// A session that takes `FOR UPDATE` on an event's row and never commits (a frozen session that
/// is not the processor's: no server timeout ends it) does not hold the event's commands up for
/// good: the processor's write waits at most its `lock_timeout`, a few times, and the command is
/// answered (500, SQLSTATE 55P03, dead-lettered) while the lock is still held. Once the holder
/// is gone, the event takes commands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_by_a_frozen_session_is_broken_by_the_lock_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.database_lock_timeout = Duration::from_millis(300);
    })
    .await;
    let event = Uuid::new_v4();
    let created = app.call(&command(event, "create", "a1")).await;
    assert_eq!(created.status(), 201, "{}", created.value);

    // The frozen session: the test's own connection, without the processor's timeouts.
    let mut holder = PgConnection::connect(&app.cfg.database_url)
        .await
        .expect("holder");
    let mut held = holder.begin().await.expect("begin");
    let locked: i64 =
        sqlx::query_scalar("SELECT version FROM events WHERE event_uuid = $1 FOR UPDATE")
            .bind(event)
            .fetch_one(&mut *held)
            .await
            .expect("lock the event's row");
    assert_eq!(locked, 1);

    let blocked = command(event, "blocked", "a2");
    let r = app.call(&blocked).await;
    assert_database_failed(&r, event, "55P03");
    let d = app.dead_letter().await;
    assert_dead_letter(&d, &blocked, "55P03");
    // Answered while the lock was still held: the holder's transaction is alive, and its lock
    // is granted.
    let still: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND granted \
         AND locktype = 'transactionid' AND mode = 'ExclusiveLock')",
    )
    .fetch_one(&mut *held)
    .await
    .expect("the holder is alive");
    assert!(still, "the holder's transaction is gone");
    assert_eq!(app.log_len(event).await, 1);

    held.rollback().await.expect("rollback");
    holder.close().await.expect("close");
    let next = app.call(&command(event, "after", "a3")).await;
    assert_eq!(
        (next.status(), next.value["version"].as_u64()),
        (200, Some(2)),
        "{}",
        next.value
    );
    app.finish().await;
}

/// A session opened with the processor's own connection options (as a frozen processor's is)
/// that stops inside a transaction holding `FOR UPDATE` on an event's row is ended by the
/// server after `idle_in_transaction_session_timeout`, which releases the lock: the processor's
/// command on that event is then applied (within the attempts its lock timeout allows), not
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_processor_session_is_ended_by_the_idle_in_transaction_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.database_idle_in_transaction_timeout = Duration::from_millis(500);
        c.database_lock_timeout = Duration::from_secs(5);
    })
    .await;
    let event = Uuid::new_v4();
    let created = app.call(&command(event, "create", "a1")).await;
    assert_eq!(created.status(), 201, "{}", created.value);

    let options = app.pool.connect_options().as_ref().clone();
    let mut frozen = options
        .connect()
        .await
        .expect("a session like the processor's");
    sqlx::query("BEGIN")
        .execute(&mut frozen)
        .await
        .expect("begin");
    sqlx::query("SELECT version FROM events WHERE event_uuid = $1 FOR UPDATE")
        .bind(event)
        .execute(&mut frozen)
        .await
        .expect("lock the event's row");
    // Frozen from here on: it sends nothing more.
    let next = app.call(&command(event, "after", "a2")).await;
    assert_eq!(
        (next.status(), next.value["version"].as_u64()),
        (200, Some(2)),
        "{}",
        next.value
    );
    // The server ended the frozen session.
    let gone = sqlx::query("SELECT 1").execute(&mut frozen).await;
    assert!(gone.is_err(), "the frozen session is still alive");
    app.finish().await;
}
