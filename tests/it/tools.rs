//! The event-log tools against a real broker and PostgreSQL: `rebuild-projection` (through the
//! library and the binary), `dlq replay` and `send` (the binary, as an operator runs them).

use std::process::Output;
use std::time::Duration;

use crate::support::TestApp;
use event_updater::domain::reply::header;
use event_updater::store::rebuild::{self, FindingKind, Options};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use uuid::Uuid;

/// Runs `event-updater <args>` with the test's configuration, `stdin` on its standard input.
async fn tool(app: &TestApp, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = app.binary();
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("EVENT_UPDATER_TOKEN")
        .env_remove("REPLAY_AUTHORIZATION")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the binary starts");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.expect("write stdin");
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the tool finishes within 120 s")
        .expect("the tool's output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The token of `app.authorization` (`Bearer <token>`).
fn token(app: &TestApp) -> &str {
    app.authorization
        .strip_prefix("Bearer ")
        .expect("a bearer header")
}

fn create(event: Uuid, n: u32) -> Value {
    json!({"request_id": format!("create-{event}"), "event_uuid": event, "expected_version": 0,
           "body": {"action": "login", "app": format!("app{n}"), "user": {"pk": n}, "context": {"n": n}}})
}

fn verify() -> Options {
    Options {
        batch_size: 2,
        ..Options::default()
    }
}

#[tokio::test]
async fn rebuild_projection_verifies_finds_a_tampered_row_and_write_repairs_it() {
    let app = TestApp::spawn().await;
    let mut events: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    events.sort();
    for (n, e) in (1..).zip(&events) {
        assert_eq!(app.call(&create(*e, n)).await.status(), 201);
    }
    let update = json!({"request_id": "u1", "event_uuid": events[2], "expected_version": 1,
                        "body": {"action": "logout", "app": "later", "client_ip": "10.0.0.1"}});
    assert_eq!(app.call(&update).await.status(), 200);

    // Batches of 2 events: the pagination crosses three batches.
    let clean = rebuild::run(&app.pool, &verify(), |_| {})
        .await
        .expect("verify");
    assert_eq!((clean.events, clean.changes, clean.batches), (5, 6, 3));
    assert_eq!(clean.differences(), 0, "{clean:?}");
    let out = tool(&app, &["rebuild-projection"], &[], None).await;
    assert!(out.status.success(), "{}", explain(&out));

    let tampered = events[2];
    sqlx::query("UPDATE events SET app = 'x' WHERE event_uuid = $1")
        .bind(tampered)
        .execute(&app.pool)
        .await
        .expect("tamper");
    let found = rebuild::run(&app.pool, &verify(), |_| {})
        .await
        .expect("verify");
    assert_eq!((found.differing, found.unrepaired()), (1, 1), "{found:?}");
    assert_eq!(found.first[0].event_uuid, tampered);
    assert_eq!(found.first[0].kind, FindingKind::Differs);
    assert_eq!(found.first[0].detail, "app");
    // Verifying changes nothing; the binary says so with its exit code and names the event.
    let out = tool(
        &app,
        &["rebuild-projection", "--batch-size", "2"],
        &[],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains(&tampered.to_string()),
        "{}",
        explain(&out)
    );
    let app_column: String = sqlx::query_scalar("SELECT app FROM events WHERE event_uuid = $1")
        .bind(tampered)
        .fetch_one(&app.pool)
        .await
        .expect("app");
    assert_eq!(app_column, "x");

    let out = tool(&app, &["rebuild-projection", "--write"], &[], None).await;
    assert!(out.status.success(), "{}", explain(&out));
    assert!(stdout(&out).contains("repaired: 1"), "{}", explain(&out));
    assert_eq!(app.assert_view_is_fold_of_log().await, 5);
    let again = rebuild::run(&app.pool, &verify(), |_| {})
        .await
        .expect("verify");
    assert_eq!(again.differences(), 0, "{again:?}");

    // The processor carries on from the repaired row.
    let next = json!({"request_id": "u2", "event_uuid": tampered, "expected_version": 2,
                      "body": {"action": "login", "app": "after-repair"}});
    let r = app.call(&next).await;
    assert_eq!(r.status(), 200, "{:?}", r.value);
    assert_eq!(r.body()["client_ip"], "10.0.0.1");
    app.assert_view_is_fold_of_log().await;
    app.finish().await;
}

#[tokio::test]
async fn rebuild_write_repairs_missing_extra_and_created_and_leaves_broken_logs_alone() {
    let app = TestApp::spawn().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(app.call(&create(a, 1)).await.status(), 201);
    assert_eq!(app.call(&create(b, 2)).await.status(), 201);
    let (extra, broken) = (Uuid::new_v4(), Uuid::new_v4());
    let tamper = |sql: &'static str, event: Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(sql)
                .bind(event)
                .execute(&pool)
                .await
                .expect(sql);
        }
    };
    tamper("DELETE FROM events WHERE event_uuid = $1", a).await;
    tamper(
        "UPDATE events SET created = created - interval '1 day' WHERE event_uuid = $1",
        b,
    )
    .await;
    tamper(
        "INSERT INTO event_log VALUES ($1, 2, 'gap', '{\"app\": \"x\"}', now(), 't', 0, 0)",
        broken,
    )
    .await;
    sqlx::query(
        "INSERT INTO events SELECT $1, version, \"user\", action, app, context, client_ip, created, expires, brand, updated_at
         FROM events WHERE event_uuid = $2",
    )
    .bind(extra)
    .bind(b)
    .execute(&app.pool)
    .await
    .expect("a view row without a log");
    let write = Options {
        write: true,
        ..verify()
    };
    let r = rebuild::run(&app.pool, &write, |_| {})
        .await
        .expect("repair");
    assert_eq!(
        (
            r.events,
            r.differing,
            r.missing,
            r.extra,
            r.broken,
            r.repaired
        ),
        (4, 1, 1, 1, 1, 3),
        "{r:?}"
    );
    assert_eq!(r.unrepaired(), 1, "the broken log is reported, not written");
    let out = tool(&app, &["rebuild-projection", "--write"], &[], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains(&broken.to_string()),
        "{}",
        explain(&out)
    );
    let views: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(views, 2, "a and b, without the extra row");
    for e in [a, b] {
        let history = event_updater::store::load_history(&app.pool, e)
            .await
            .expect("history");
        let changes: Vec<(i64, Value)> =
            history.into_iter().map(|h| (h.version, h.change)).collect();
        assert_eq!(
            event_updater::domain::projection::fold(e, &changes).expect("folds"),
            event_updater::store::load_view(&app.pool, e)
                .await
                .expect("view")
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn rebuild_write_beside_a_running_processor_never_overwrites_its_work() {
    let app = TestApp::spawn().await;
    let events: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for (n, e) in (1..).zip(&events) {
        assert_eq!(app.call(&create(*e, n)).await.status(), 201);
    }
    sqlx::query("UPDATE events SET app = 'x'")
        .execute(&app.pool)
        .await
        .expect("tamper");
    // 40 updates (10 per event, in order per event) while repairs run over and over.
    let records: Vec<(String, Vec<u8>)> = (1..=10)
        .flat_map(|v| {
            events.iter().map(move |e| {
                let c = json!({"request_id": format!("{e}-{v}"), "event_uuid": e,
                               "body": {"action": "login", "app": format!("v{v}")}});
                (e.to_string(), c.to_string().into_bytes())
            })
        })
        .collect();
    let write = Options {
        write: true,
        batch_size: 1,
        ..Options::default()
    };
    let repairs = async {
        let mut retries = 0;
        for _ in 0..20 {
            let r = rebuild::run(&app.pool, &write, |_| {})
                .await
                .expect("repair");
            retries += r.retries;
        }
        retries
    };
    let (_, retries) = tokio::join!(app.send_many(&records), repairs);
    for r in app.replies(records.len()).await {
        assert!(matches!(r.status(), 200 | 201), "{:?}", r.value);
    }
    let last = rebuild::run(&app.pool, &verify(), |_| {})
        .await
        .expect("verify");
    assert_eq!(last.differences(), 0, "{last:?} (retries: {retries})");
    assert_eq!(app.assert_view_is_fold_of_log().await, 4);
    for e in &events {
        assert_eq!(app.log_len(*e).await, 11);
    }
    app.finish().await;
}

#[tokio::test]
async fn a_repair_that_meets_a_concurrent_writer_retries_on_a_fresh_snapshot() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4();
    assert_eq!(app.call(&create(event, 1)).await.status(), 201);
    sqlx::query("UPDATE events SET app = 'x' WHERE event_uuid = $1")
        .bind(event)
        .execute(&app.pool)
        .await
        .expect("tamper");
    // A pool of its own: the processor's has two connections.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&app.cfg.database_url)
        .await
        .expect("pool");
    // A writer that holds the row, as the processor does while it applies version 2.
    let mut writer = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM events WHERE event_uuid = $1 FOR UPDATE")
        .bind(event)
        .execute(&mut *writer)
        .await
        .expect("lock");
    let write = Options {
        write: true,
        ..Options::default()
    };
    let repair = rebuild::run(&pool, &write, |_| {});
    let commit_once_the_repair_waits = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .expect("pg_stat_activity");
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the repair never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("INSERT INTO event_log VALUES ($1, 2, 'w', '{\"action\": \"logout\", \"app\": \"w\"}', now(), 't', 0, 1)")
            .bind(event)
            .execute(&mut *writer)
            .await
            .expect("log");
        sqlx::query(
            "UPDATE events SET version = 2, action = 'logout', app = 'w' WHERE event_uuid = $1",
        )
        .bind(event)
        .execute(&mut *writer)
        .await
        .expect("view");
        writer.commit().await.expect("commit");
    };
    let (report, ()) = tokio::join!(repair, commit_once_the_repair_waits);
    let report = report.expect("the repair");
    assert!(report.retries >= 1, "{report:?}");
    // The retry saw the writer's consistent row: nothing to repair, nothing overwritten.
    assert_eq!(
        (report.differences(), report.repaired),
        (0, 0),
        "{report:?}"
    );
    let app_column: String = sqlx::query_scalar("SELECT app FROM events WHERE event_uuid = $1")
        .bind(event)
        .fetch_one(&app.pool)
        .await
        .expect("app");
    assert_eq!(app_column, "w");
    app.assert_view_is_fold_of_log().await;
    pool.close().await;
    app.finish().await;
}

/// The high watermark of partition `p` of `topic`.
fn high_watermark(app: &TestApp, topic: &str, p: i32) -> i64 {
    let c: BaseConsumer = crate::support::client(&app.cfg).create().expect("consumer");
    let (_, high) = c
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .expect("watermarks");
    high
}

fn total_records(app: &TestApp, topic: &str) -> i64 {
    (0..app.cfg.topic_partitions)
        .map(|p| high_watermark(app, topic, p))
        .sum()
}

#[tokio::test]
async fn dlq_replay_resubmits_a_dead_letter_which_gets_its_stored_reply_again() {
    let app = TestApp::spawn().await;
    app.send_raw(
        Some("some-key"),
        Some(b"{\"request_id\": oops"),
        &[
            (header::REQUEST_ID, b"dead-1"),
            (header::CORRELATION_ID, b"corr-1"),
        ],
    )
    .await;
    let first = app.reply().await;
    assert_eq!(first.status(), 400);
    let dead = app.dead_letter().await;
    assert_eq!(dead.header(header::REQUEST_ID), Some("dead-1"));
    assert_eq!(dead.header(header::AUTHORIZATION), None);

    let listed = tool(&app, &["dlq", "replay", "--dry-run"], &[], None).await;
    assert!(listed.status.success(), "{}", explain(&listed));
    assert!(
        stdout(&listed).contains("request-id dead-1"),
        "{}",
        explain(&listed)
    );
    assert!(
        stdout(&listed).contains("1 dead letters"),
        "{}",
        explain(&listed)
    );
    assert_eq!(
        total_records(&app, &app.cfg.command_topic),
        1,
        "a dry run publishes nothing"
    );
    let none = tool(
        &app,
        &["dlq", "replay", "--dry-run", "--from-offset", "1"],
        &[],
        None,
    )
    .await;
    assert!(none.status.success(), "{}", explain(&none));
    assert!(
        stdout(&none).contains("0 dead letters"),
        "{}",
        explain(&none)
    );
    for (since, n) in [("2000-01-01T00:00:00Z", "1"), ("2100-01-01", "0")] {
        let by_time = tool(
            &app,
            &["dlq", "replay", "--dry-run", "--since", since],
            &[],
            None,
        )
        .await;
        assert!(by_time.status.success(), "{}", explain(&by_time));
        assert!(
            stdout(&by_time).contains(&format!("\n{n} dead letters"))
                || stdout(&by_time).starts_with(&format!("{n} dead letters")),
            "{}",
            explain(&by_time)
        );
    }

    let replayed = tool(
        &app,
        &["dlq", "replay"],
        &[("REPLAY_AUTHORIZATION", &app.authorization)],
        None,
    )
    .await;
    assert!(replayed.status.success(), "{}", explain(&replayed));
    assert!(
        stdout(&replayed).contains("Replayed 1 dead letters"),
        "{}",
        explain(&replayed)
    );

    let again = app.reply().await;
    assert_eq!(again.raw, first.raw, "the stored reply, byte for byte");
    assert_eq!(again.header(header::REQUEST_ID), Some("dead-1"));
    assert_eq!(again.header(header::CORRELATION_ID), Some("corr-1"));

    // The re-published command: the original key, value and headers, credentials, no dlq-*.
    let commands = app.new_reader(&app.cfg.command_topic);
    let original = TestApp::read_from(&commands).await;
    let copy = TestApp::read_from(&commands).await;
    assert_eq!(original.header(header::CORRELATION_ID), Some("corr-1"));
    assert_eq!((&copy.key, &copy.raw), (&dead.key, &dead.raw));
    let names: Vec<&str> = copy.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            header::CORRELATION_ID,
            header::REQUEST_ID,
            header::AUTHORIZATION
        ]
    );
    assert_eq!(copy.header(header::REQUEST_ID), Some("dead-1"));
    assert_eq!(
        copy.header(header::AUTHORIZATION),
        Some(app.authorization.as_str())
    );
    drop(commands);
    app.finish().await;
}

#[tokio::test]
async fn send_prints_the_reply_and_exits_0_for_2xx_and_1_otherwise() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4();
    let env = [("EVENT_UPDATER_TOKEN", token(&app))];

    let created = tool(
        &app,
        &[
            "send",
            "--event-uuid",
            &event.simple().to_string(),
            "--expected-version",
            "0",
            "--body",
            r#"{"action": "login", "app": "authentik.core", "context": {"b": 1, "a": 1.0}}"#,
            "--correlation-id",
            "corr-send",
        ],
        &env,
        None,
    )
    .await;
    assert!(created.status.success(), "{}", explain(&created));
    let reply: Value = serde_json::from_str(stdout(&created).trim()).expect("the reply JSON");
    assert_eq!(reply["status"], 201, "{reply}");
    assert_eq!(reply["version"], 1);
    assert_eq!(reply["event_uuid"], event.to_string());
    assert!(
        Uuid::parse_str(reply["request_id"].as_str().unwrap()).is_ok(),
        "a random request id"
    );
    assert!(
        stdout(&created).contains(r#""context":{"b":1,"a":1.0}"#),
        "the body is sent as given: {}",
        explain(&created)
    );

    // From standard input: an invalid body gets DRF's 400, and the exit code says so.
    let command = json!({"request_id": "send-400", "event_uuid": event, "body": {"action": "LOGIN", "app": "x"}});
    let refused = tool(
        &app,
        &["send", "--file", "-"],
        &env,
        Some(command.to_string().as_bytes()),
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", explain(&refused));
    let reply: Value = serde_json::from_str(stdout(&refused).trim()).expect("the reply JSON");
    assert_eq!(reply["request_id"], "send-400");
    assert_eq!(reply["status"], 400);
    assert_eq!(
        reply["body"],
        json!({"action": ["\"LOGIN\" is not a valid choice."]})
    );

    // From a file, with the header form of the token; an update of the event is a 200.
    let path = std::env::temp_dir().join(format!("{}-command.json", app.cfg.kafka_group_id));
    let command = json!({"request_id": "send-200", "event_uuid": event, "expected_version": 1,
                         "body": {"action": "logout", "app": "a"}});
    std::fs::write(&path, command.to_string()).expect("write the command");
    let updated = tool(
        &app,
        &["send", "--file", path.to_str().unwrap()],
        &[("EVENT_UPDATER_TOKEN", &app.authorization)],
        None,
    )
    .await;
    let _ = std::fs::remove_file(&path);
    assert!(updated.status.success(), "{}", explain(&updated));
    let reply: Value = serde_json::from_str(stdout(&updated).trim()).expect("the reply JSON");
    assert_eq!(
        (reply["status"].as_u64(), reply["version"].as_u64()),
        (Some(200), Some(2))
    );

    // No token: the processor's 403.
    let forbidden = tool(
        &app,
        &["send", "--event-uuid", &event.to_string(), "--body", "{}"],
        &[],
        None,
    )
    .await;
    assert_eq!(forbidden.status.code(), Some(1), "{}", explain(&forbidden));
    assert!(
        stdout(&forbidden).contains("\"status\":403"),
        "{}",
        explain(&forbidden)
    );
    app.finish().await;
}
