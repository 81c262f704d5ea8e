//! `event-updater feed backfill` (the binary, as an operator runs it) against a real broker and
//! PostgreSQL, beside a processor that publishes the live change feed: the tool republishes the
//! log into new topics, and a reader of those finds the live feed's records byte for byte (key
//! and value), per event in version order; `--event` and `--since` select; a run the broker
//! fails part-way leaves a topic that still keeps the feed's guarantee, and a rerun resumes after
//! the last page acknowledged (`--restart` starts over).

use std::collections::{BTreeMap, HashMap};
use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::feed::{
    check_changes, fold_equals_view, read_topic, view_topic_matches, FeedRecord,
};
use crate::support::{client, TestApp, PARTITIONS};
use event_updater::config::Config;
use event_updater::domain::feed;
use event_updater::domain::reply::header;
use event_updater::store::{self, backfill};

/// A record's (event, version), keyed as the live feed's records are.
type Change = (Uuid, i64);

/// Runs `event-updater feed backfill <args>` with the test's database and broker, publishing to
/// `changes` and `view` (empty: no views).
async fn run_backfill(app: &TestApp, args: &[&str], changes: &str, view: &str) -> Output {
    let mut cmd = app.binary();
    cmd.args(["feed", "backfill"])
        .args(args)
        .env("CHANGES_TOPIC", changes)
        .env("VIEW_TOPIC", view)
        .env("TOPIC_PARTITIONS", PARTITIONS.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("the binary starts");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the backfill finishes within 120 s")
        .expect("the backfill's output")
}

fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The number in `text` right after `prefix` (`"Published 12 changes"` → 12).
fn count_after(text: &str, prefix: &str) -> Option<i64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Applies `rounds[i]` changes to event `i` (a create, then updates), round by round, waiting for
/// every reply (each a 2xx).
async fn apply(app: &TestApp, events: &[Uuid], rounds: &[i64], big: Option<(Uuid, &str)>) {
    let most = rounds.iter().copied().max().unwrap_or(0);
    for round in 0..most {
        let mut sent = 0;
        for (i, (event, n)) in events.iter().zip(rounds).enumerate() {
            if round >= *n {
                continue;
            }
            let body = if round == 0 {
                json!({"action": "login", "app": format!("app{i}"), "user": {"pk": i}, "context": {"i": i}})
            } else {
                let context = match big {
                    Some((u, filler)) if u == *event => json!({"round": round, "filler": filler}),
                    _ => json!({"round": round, "z": [i, round], "a": "x"}),
                };
                let action = if round % 2 == 1 { "logout" } else { "login" };
                json!({"action": action,
                       "app": format!("app{i}-{round}"), "context": context})
            };
            app.send(
                &json!({"request_id": format!("{event}-{round}"), "event_uuid": event,
                             "expected_version": round, "body": body}),
            )
            .await;
            sent += 1;
        }
        for r in app.replies(sent).await {
            assert!(r.status() < 300, "a command failed: {:?}", r.value);
        }
    }
}

/// The (event, version) of a change record, from its value.
fn change_of(r: &FeedRecord) -> Change {
    let v: Value = serde_json::from_slice(&r.value).expect("a change record is JSON");
    let event = Uuid::parse_str(v["event_uuid"].as_str().expect("event_uuid")).expect("a UUID");
    (event, v["version"].as_i64().expect("version"))
}

/// The live feed's records by (event, version), once the changes topic holds every row of the
/// log (the processor publishes them after its replies may have gone out): the first record of
/// each, after checking the feed's guarantee on the topic.
async fn live_feed(app: &TestApp) -> HashMap<Change, FeedRecord> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .expect("count the log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = read_topic(&app.cfg, &app.cfg.changes_topic)
            .await
            .unwrap_or_default();
        let report = check_changes(&records).expect("the live feed keeps its guarantee");
        if report.distinct() as i64 == rows {
            let mut out = HashMap::new();
            for r in records {
                out.entry(change_of(&r)).or_insert(r);
            }
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "the live feed holds {} of the log's {rows} changes",
            report.distinct()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that every record of a backfilled changes topic is the live feed's record of its
/// (event, version), key and value byte for byte, with the header `schema-version` and no
/// `traceparent`; returns the changes per event in topic order.
fn same_as_live(
    records: &[FeedRecord],
    live: &HashMap<Change, FeedRecord>,
) -> BTreeMap<Uuid, Vec<i64>> {
    let mut by_event: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for r in records {
        let change = change_of(r);
        let first = live
            .get(&change)
            .unwrap_or_else(|| panic!("{change:?} at {} is not on the live feed", r.at()));
        assert_eq!(r.key, first.key, "the key of {change:?}");
        assert_eq!(
            String::from_utf8_lossy(&r.value),
            String::from_utf8_lossy(&first.value),
            "the value of {change:?}"
        );
        assert_eq!(
            r.header(header::SCHEMA_VERSION),
            Some(feed::SCHEMA_VERSION.as_bytes()),
            "{change:?}'s schema version"
        );
        assert_eq!(
            r.header(header::TRACEPARENT),
            None,
            "a backfilled record carries no trace"
        );
        by_event.entry(change.0).or_default().push(change.1);
    }
    by_event
}

/// Creates `name` with `PARTITIONS` partitions and the given topic settings.
async fn create_topic(cfg: &Config, name: &str, settings: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client(cfg).create().expect("admin");
    let mut topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create the topic")
    {
        r.expect("topic created");
    }
}

/// Deletes the test's own topics (after every client of them is gone).
async fn delete_topics(cfg: &Config, names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = client(cfg).create().expect("admin");
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        admin.delete_topics(names, &AdminOptions::new()),
    )
    .await;
}

/// Events in the log's order (by UUID).
fn events(n: usize) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    out.sort();
    out
}

#[tokio::test]
async fn backfill_into_new_topics_repeats_the_live_feed_byte_for_byte() {
    let app = TestApp::spawn().await;
    let ids = events(6);
    let rounds = [1, 2, 3, 4, 1, 5];
    apply(&app, &ids, &rounds, None).await;
    let live = live_feed(&app).await;
    assert_eq!(live.len() as i64, rounds.iter().sum::<i64>());

    let changes = format!("{}-backfill", app.cfg.kafka_group_id);
    let views = format!("{}-backfill-view", app.cfg.kafka_group_id);
    // Pages of 4: events span pages, and the last page is short.
    let out = run_backfill(&app, &["--page-size", "4"], &changes, &views).await;
    assert!(out.status.success(), "{}", explain(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        count_after(&stdout, "Published "),
        Some(16),
        "{}",
        explain(&out)
    );
    assert!(
        stdout.contains("of 6 events") && stdout.contains("and 6 views"),
        "{}",
        explain(&out)
    );

    let records = read_topic(&app.cfg, &changes)
        .await
        .expect("read the backfill");
    let report = check_changes(&records).expect("the backfill keeps the feed's guarantee");
    assert_eq!(report.repeats, 0, "one record per change");
    let by_event = same_as_live(&records, &live);
    for (event, n) in ids.iter().zip(rounds) {
        assert_eq!(
            by_event.get(event),
            Some(&(1..=n).collect::<Vec<i64>>()),
            "{event}'s versions in order"
        );
    }
    assert_eq!(fold_equals_view(&app.pool, &report).await, Ok(6));
    let view_records = read_topic(&app.cfg, &views).await.expect("read the views");
    assert_eq!(view_topic_matches(&app.pool, &view_records).await, Ok(6));

    // A complete run leaves no cursor: the same command again starts over, and every record it
    // adds repeats one already there, byte for byte.
    let again = run_backfill(&app, &["--page-size", "4"], &changes, &views).await;
    assert!(again.status.success(), "{}", explain(&again));
    assert_eq!(
        count_after(&String::from_utf8_lossy(&again.stdout), "Published "),
        Some(16),
        "{}",
        explain(&again)
    );
    let records = read_topic(&app.cfg, &changes).await.expect("read again");
    let report = check_changes(&records).expect("repeats are identical");
    assert_eq!((report.records, report.repeats), (32, 16));
    same_as_live(&records, &live);

    let cfg = app.cfg.clone();
    app.finish().await;
    delete_topics(&cfg, &[&changes, &views]).await;
}

#[tokio::test]
async fn backfill_of_one_event_or_of_the_changes_since_a_time() {
    let app = TestApp::spawn().await;
    let ids = events(5);
    apply(&app, &ids, &[1, 1, 1, 1, 1], None).await;
    let before: DateTime<Utc> = sqlx::query_scalar("SELECT max(recorded_at) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .expect("the last change's time");
    // Later changes: version 2 of the first four events, then version 3 of the first.
    apply(&app, &ids, &[2, 2, 2, 2, 1], None).await;
    apply(&app, &ids, &[3, 2, 2, 2, 1], None).await;
    let live = live_feed(&app).await;
    let since = (before + chrono::Duration::microseconds(1))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();

    // One event, with its view.
    let (one, one_view) = (
        format!("{}-one", app.cfg.kafka_group_id),
        format!("{}-one-view", app.cfg.kafka_group_id),
    );
    let event = ids[0].to_string();
    // While another run of the same job holds its lock, a second one refuses to start.
    let mut holder = app.pool.acquire().await.expect("a connection");
    let same_job = backfill::Job {
        changes_topic: one.clone(),
        view_topic: one_view.clone(),
        event: Some(ids[0]),
        since: None,
    };
    backfill::lock(&mut holder, &same_job)
        .await
        .expect("the job's lock");
    let refused = run_backfill(&app, &["--event", &event], &one, &one_view).await;
    assert_eq!(refused.status.code(), Some(1), "{}", explain(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("another `feed backfill` of the same job is running"),
        "{}",
        explain(&refused)
    );
    holder.close().await.expect("release the lock");
    let out = run_backfill(&app, &["--event", &event], &one, &one_view).await;
    assert!(out.status.success(), "{}", explain(&out));
    let records = read_topic(&app.cfg, &one).await.expect("read");
    let by_event = same_as_live(&records, &live);
    assert_eq!(
        by_event.into_iter().collect::<Vec<_>>(),
        vec![(ids[0], vec![1, 2, 3])]
    );
    let views = read_topic(&app.cfg, &one_view)
        .await
        .expect("read the view");
    let row = store::load_view(&app.pool, ids[0])
        .await
        .expect("view")
        .expect("a row");
    assert_eq!(views.len(), 1, "one view, of the one event");
    assert_eq!(views[0].key_text(), event);
    assert_eq!(
        serde_json::from_slice::<Value>(&views[0].value).expect("JSON"),
        serde_json::from_slice::<Value>(&feed::view_record(&row)).expect("JSON")
    );

    // The changes since a time, without views.
    let later = format!("{}-since", app.cfg.kafka_group_id);
    let out = run_backfill(&app, &["--since", &since], &later, "").await;
    assert!(out.status.success(), "{}", explain(&out));
    let expected: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT event_uuid, version FROM event_log WHERE recorded_at > $1 ORDER BY event_uuid, version",
    )
    .bind(before)
    .fetch_all(&app.pool)
    .await
    .expect("the later changes");
    let mut want: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for (u, v) in &expected {
        want.entry(*u).or_default().push(*v);
    }
    assert_eq!(
        want,
        BTreeMap::from([
            (ids[0], vec![2, 3]),
            (ids[1], vec![2]),
            (ids[2], vec![2]),
            (ids[3], vec![2])
        ]),
        "the time splits the rounds"
    );
    let records = read_topic(&app.cfg, &later).await.expect("read");
    assert_eq!(same_as_live(&records, &live), want);

    let cfg = app.cfg.clone();
    app.finish().await;
    delete_topics(&cfg, &[&one, &one_view, &later]).await;
}

#[tokio::test]
async fn a_backfill_the_broker_fails_stops_and_a_rerun_resumes_after_the_last_page_acknowledged() {
    let app = TestApp::spawn().await;
    // The last event in the log's order gets a change too large for the target topic.
    let ids = events(9);
    let big = *ids.last().expect("events");
    let filler: String = (0..5000)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    apply(&app, &ids, &[2; 9], Some((big, &filler))).await;
    let live = live_feed(&app).await;
    let total = live.len() as i64;
    assert_eq!(total, 18);

    let changes = format!("{}-resume", app.cfg.kafka_group_id);
    create_topic(&app.cfg, &changes, &[("max.message.bytes", "20000")]).await;
    let args = ["--page-size", "3"];

    let failed = run_backfill(&app, &args, &changes, "").await;
    eprintln!("the failed run: {}", explain(&failed));
    assert_eq!(failed.status.code(), Some(1), "{}", explain(&failed));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("delivery to") && stderr.contains("run the same command again to resume"),
        "{}",
        explain(&failed)
    );
    let cursor = || async {
        sqlx::query_scalar::<_, i64>("SELECT published FROM feed_backfill_cursors")
            .fetch_optional(&app.pool)
            .await
            .expect("the cursor")
    };
    let published = cursor().await.expect("a failed run leaves its cursor");
    assert!(
        published > 0 && published < total && published % 3 == 0,
        "whole pages before the failing one: {published}"
    );
    // What the failed run delivered still keeps the guarantee: no version after a missing one.
    let partial = read_topic(&app.cfg, &changes).await.expect("read");
    check_changes(&partial).expect("a failed backfill leaves no gap");
    same_as_live(&partial, &live);

    // --restart starts over (and fails at the same record).
    let restarted = run_backfill(&app, &["--page-size", "3", "--restart"], &changes, "").await;
    assert_eq!(restarted.status.code(), Some(1), "{}", explain(&restarted));
    assert_eq!(
        count_after(&String::from_utf8_lossy(&restarted.stderr), "Publishing "),
        Some(total),
        "{}",
        explain(&restarted)
    );
    assert_eq!(cursor().await, Some(published));

    // The topic takes the large record now: the same command resumes after the cursor.
    raise_limit(&app.cfg, &changes, "2000000").await;
    let resumed = run_backfill(&app, &args, &changes, "").await;
    assert!(resumed.status.success(), "{}", explain(&resumed));
    eprintln!("the resumed run: {}", explain(&resumed));
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert_eq!(
        count_after(&String::from_utf8_lossy(&resumed.stderr), "Publishing "),
        Some(total - published),
        "{}",
        explain(&resumed)
    );
    assert_eq!(
        count_after(&stdout, "Published "),
        Some(total - published),
        "{}",
        explain(&resumed)
    );
    assert!(
        stdout.contains(&format!("resumed after {published} changes")),
        "{}",
        explain(&resumed)
    );
    assert_eq!(cursor().await, None, "a complete run removes its cursor");

    let records = read_topic(&app.cfg, &changes).await.expect("read");
    let report = check_changes(&records).expect("the resumed backfill keeps the guarantee");
    assert_eq!(
        report.distinct() as i64,
        total,
        "every change is on the topic"
    );
    same_as_live(&records, &live);
    assert_eq!(fold_equals_view(&app.pool, &report).await, Ok(9));

    let cfg = app.cfg.clone();
    app.finish().await;
    delete_topics(&cfg, &[&changes]).await;
}

/// Sets `topic`'s `max.message.bytes` and waits until the broker applies it (it answers
/// describe from the configuration it applies).
async fn raise_limit(cfg: &Config, topic: &str, bytes: &str) {
    let admin: AdminClient<DefaultClientContext> = client(cfg).create().expect("admin");
    let raise = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", bytes);
    for r in admin
        .alter_configs([&raise], &AdminOptions::new())
        .await
        .expect("alter the topic")
    {
        r.expect("max.message.bytes set");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("describe the topic");
        if described
            .iter()
            .flatten()
            .any(|r| r.get("max.message.bytes").and_then(|e| e.value.as_deref()) == Some(bytes))
        {
            return;
        }
        assert!(Instant::now() < deadline, "the limit never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_backfill_killed_mid_run_resumes_with_every_change_and_view() {
    let app = TestApp::spawn().await;
    // 400 events of 5 versions, published at once (one partition per event keeps their order).
    let ids = events(400);
    let mut records = Vec::new();
    for round in 0..5 {
        for (i, event) in ids.iter().enumerate() {
            let body = if round == 0 {
                json!({"action": "login", "app": format!("app{i}"), "user": {"pk": i}, "context": {}})
            } else {
                json!({"action": "logout", "app": format!("app{i}-{round}"), "context": {"round": round}})
            };
            let command = json!({"request_id": format!("{event}-{round}"), "event_uuid": event,
                                 "expected_version": round, "body": body});
            records.push((event.to_string(), command.to_string().into_bytes()));
        }
    }
    app.send_many(&records).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .expect("count")
        < 2000
    {
        assert!(Instant::now() < deadline, "the commands were not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live = live_feed(&app).await;
    assert_eq!(live.len(), 2000);

    let changes = format!("{}-killed", app.cfg.kafka_group_id);
    let views = format!("{}-killed-view", app.cfg.kafka_group_id);
    let args = ["--page-size", "2"];
    let mut cmd = app.binary();
    cmd.args(["feed", "backfill"])
        .args(args)
        .env("CHANGES_TOPIC", &changes)
        .env("VIEW_TOPIC", &views)
        .env("TOPIC_PARTITIONS", PARTITIONS.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the binary starts");
    // Killed once its cursor has moved: part-way (a thousand pages are left).
    let deadline = Instant::now() + Duration::from_secs(60);
    let cursor = || async {
        sqlx::query_scalar::<_, i64>("SELECT published FROM feed_backfill_cursors")
            .fetch_optional(&app.pool)
            .await
            .expect("the cursor")
    };
    while cursor().await.unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the backfill never moved its cursor"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().await.expect("kill -9");
    let published = cursor().await.expect("a killed run leaves its cursor");
    assert!(
        published > 0 && published < 2000,
        "killed part-way: {published}"
    );
    let partial = read_topic(&app.cfg, &changes).await.expect("read");
    check_changes(&partial).expect("a killed backfill leaves no gap");

    let resumed = run_backfill(&app, &args, &changes, &views).await;
    assert!(resumed.status.success(), "{}", explain(&resumed));
    eprintln!(
        "killed after {published} changes; the resumed run: {}",
        explain(&resumed)
    );
    // The cursor it resumed from: at least what was read at the kill (the server may still
    // commit a page's advance the killed tool had sent), and the rerun publishes only the rest.
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let resumed_after = count_after(&stdout, "resumed after ").expect("a resumed run says so");
    assert!(
        resumed_after >= published && resumed_after < 2000,
        "{}",
        explain(&resumed)
    );
    assert_eq!(
        count_after(&stdout, "Published "),
        Some(2000 - resumed_after),
        "{}",
        explain(&resumed)
    );
    assert_eq!(cursor().await, None);
    let records = read_topic(&app.cfg, &changes).await.expect("read");
    let report = check_changes(&records).expect("the resumed backfill keeps the guarantee");
    assert_eq!(report.distinct(), 2000, "every change is on the topic");
    assert!(
        report.repeats <= 2,
        "at most the page in hand at the kill is repeated: {}",
        report.repeats
    );
    same_as_live(&records, &live);
    assert_eq!(fold_equals_view(&app.pool, &report).await, Ok(400));
    let view_records = read_topic(&app.cfg, &views).await.expect("read the views");
    assert_eq!(view_topic_matches(&app.pool, &view_records).await, Ok(400));

    let cfg = app.cfg.clone();
    app.finish().await;
    delete_topics(&cfg, &[&changes, &views]).await;
}
