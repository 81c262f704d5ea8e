//! The change feed under faults, read by a separate reader of its topics
//! ([`crate::support::feed`]): for every event, versions 1..n in order without a gap, repeats
//! byte-identical, the fold of the feed equal to the view table, and the view topic's last
//! record per key equal to the view row.
//!
//! - 10,000 commands over 500 events while the processor is killed with `kill -9` three times
//!   (restarted each time) and a second member joins the group (`FEED_COMMANDS`,
//!   `FEED_EVENTS`, `FEED_KILLS` change the sizes);
//! - a command read again after it was applied (the group's offsets rewound) publishes its
//!   change again, with the same bytes;
//! - with `CHANGES_TOPIC` and `VIEW_TOPIC` empty nothing is published and commands are answered;
//! - a changes topic that cannot take records holds the commands' offsets back (a change is
//!   acknowledged before its command is committed) and makes the service unready; once the
//!   topic is back the feed goes on without a gap.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use event_updater::domain::feed::SCHEMA_VERSION;
use event_updater::domain::reply::header;
use event_updater::metrics;
use event_updater_harness::process::Processor;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::groups::assigned;
use crate::publishing::{delete_topic, recreate_topic, wait_for_committed, NOTICE};
use crate::support::exactly_once::{
    assert_exactly_once, env_or, load, send_paced, wait_for_all_or_explain, Rng,
};
use crate::support::feed::{
    check_changes, fold_equals_view, read_topic, view_topic_matches, FeedRecord, FeedReport,
};
use crate::support::{client, http_get, wait_for_status, TestApp};

/// Partitions of the command topic (and so of the feed's topics) in the fault test: two
/// members share them.
const FEED_PARTITIONS: i32 = 6;

/// Reads the changes topic and checks the guarantee; panics with the problems found.
async fn read_changes(app: &TestApp) -> (Vec<FeedRecord>, FeedReport) {
    let records = read_topic(&app.cfg, &app.cfg.changes_topic)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = check_changes(&records).unwrap_or_else(|e| panic!("{e}"));
    assert_schema_version(&records, "change");
    (records, report)
}

/// Every record says the schema version of its value.
fn assert_schema_version(records: &[FeedRecord], what: &str) {
    for r in records {
        assert_eq!(
            r.header(header::SCHEMA_VERSION),
            Some(SCHEMA_VERSION.as_bytes()),
            "{what} record at {} has no {} {SCHEMA_VERSION}",
            r.at(),
            header::SCHEMA_VERSION
        );
    }
}

/// The fold of the feed equals the view table, and the view topic's last record per key the
/// view row; returns how many view records were read.
async fn assert_feed_matches_the_view_table(app: &TestApp, report: &FeedReport) -> usize {
    fold_equals_view(&app.pool, report)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let views = read_topic(&app.cfg, &app.cfg.view_topic)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    view_topic_matches(&app.pool, &views)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    views.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_and_a_joining_member_leave_every_events_feed_whole() {
    let (n, m, kills) = (
        env_or("FEED_COMMANDS", 10_000),
        env_or("FEED_EVENTS", 500),
        env_or("FEED_KILLS", 3),
    );
    let started = Instant::now();
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| {
        c.max_batch = 200;
        c.topic_partitions = FEED_PARTITIONS;
    })
    .await;
    let l = load(&mut rng, n, m);
    let collector = app.collect_replies();
    let waits: Vec<u64> = (0..kills).map(|_| 300 + rng.below(1500)).collect();
    let churn = async {
        let mut child = app.start_child("p0", &[]).await;
        let mut member = None;
        for (k, wait) in waits.iter().enumerate() {
            // Each kill lands on a processor at work: it holds partitions, and the load flows.
            holds_partitions(&child).await;
            tokio::time::sleep(Duration::from_millis(*wait)).await;
            println!(
                "kill -9 {wait} ms after it held partitions (assigned={:?}); {} answered so far",
                assigned(&child),
                collector.answered()
            );
            child.kill9().await.expect("kill -9");
            child = app.start_child(&format!("p{}", k + 1), &[]).await;
            if member.is_none() {
                member = Some(app.start_child("member", &[]).await);
                println!(
                    "a second member joined; {} answered so far",
                    collector.answered()
                );
            }
        }
        (child, member)
    };
    let ((), (child, member)) =
        tokio::join!(send_paced(&app, &l, Duration::from_millis(350)), churn);
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(300)).await;
    for p in [Some(child), member].into_iter().flatten() {
        p.stop(Duration::from_secs(30))
            .await
            .expect("the processor stops cleanly");
    }
    // Every command is committed: each change was acknowledged before, so the feed is whole.
    wait_for_committed(&app, l.records.len() as i64).await;
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!("{kills} kill -9 and a member joining"),
    )
    .await;

    let (records, report) = read_changes(&app).await;
    let mut ids = report.request_ids().unwrap_or_else(|e| panic!("{e}"));
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a request id on two changes");
    ids.sort();
    let mut valid: Vec<String> = l.valid.iter().cloned().collect();
    valid.sort();
    assert_eq!(ids, valid, "one change per valid command");
    let views = assert_feed_matches_the_view_table(&app, &report).await;
    println!(
        "feed under {kills} kill -9 and a member joining: {} commands ({} valid) over {} events; \
         {} change records, {} distinct, {} repeats (identical); {views} view records; \
         run time {:?}",
        l.ids.len(),
        l.valid.len(),
        report.events(),
        records.len(),
        report.distinct(),
        report.repeats,
        started.elapsed()
    );
    app.finish().await;
}

/// Waits until `child` holds partitions of the command topic (its log says so).
async fn holds_partitions(child: &Processor) {
    let deadline = Instant::now() + NOTICE;
    while assigned(child).is_none_or(|n| n == 0) {
        assert!(
            Instant::now() < deadline,
            "the processor holds no partition after {NOTICE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn command(request_id: &str, event: &str, app: &str) -> Value {
    json!({"request_id": request_id, "event_uuid": event,
           "body": {"action": "model_updated", "app": app, "context": {"by": request_id}}})
}

/// Moves this test's group back to the start of every command partition (the group must be
/// empty: its processors stopped), so that its next member reads every command again.
async fn rewind_group(app: &TestApp) {
    let group: StreamConsumer = client(&app.cfg)
        .set("group.id", &app.cfg.kafka_group_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("group client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..app.cfg.topic_partitions {
        tpl.add_partition_offset(&app.cfg.command_topic, p, Offset::Offset(0))
            .expect("partition");
    }
    let deadline = Instant::now() + NOTICE;
    // The coordinator refuses the commit while the stopped members still count as members.
    while let Err(e) = group.commit(&tpl, CommitMode::Sync) {
        assert!(Instant::now() < deadline, "rewinding the group: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for_committed(app, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_read_again_after_it_was_applied_publishes_its_change_again_identically() {
    let app = TestApp::resources_with(|_| {}).await;
    let event = Uuid::new_v4().to_string();
    let ids: Vec<String> = (1..=3).map(|i| format!("again-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        app.send(&command(id, &event, &format!("a{i}"))).await;
    }
    let collector = app.collect_replies();
    let first = app.start_child("first", &[]).await;
    collector
        .wait_for_all(&ids, NOTICE)
        .await
        .expect("the commands are answered");
    wait_for_committed(&app, 3).await;
    first
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    let (before, report) = read_changes(&app).await;
    assert_eq!((before.len(), report.distinct()), (3, 3));

    rewind_group(&app).await;
    let second = app.start_child("second", &[]).await;
    // Read again: each command is answered a second time (from its stored reply)...
    let deadline = Instant::now() + NOTICE;
    while ids
        .iter()
        .any(|id| collector.get(id).map_or(0, |c| c.len()) < 2)
    {
        assert!(
            Instant::now() < deadline,
            "the commands read again are not all answered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_committed(&app, 3).await;
    second
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    let replies = collector.stop().await;
    for id in &ids {
        assert_eq!(replies[id][0].value, replies[id][1].value, "{id}: replies");
    }
    assert_eq!(app.log_len(event.parse().expect("uuid")).await, 3);
    // ... and its change is published again, byte for byte.
    let (after, report) = read_changes(&app).await;
    assert_eq!(after[..3], before[..], "the first publications are kept");
    assert_eq!(
        (after.len(), report.distinct(), report.repeats),
        (6, 3, 3),
        "each change published once more: {after:#?}"
    );
    for (again, first) in after[3..].iter().zip(&before) {
        assert_eq!((&again.key, &again.value), (&first.key, &first.value));
    }
    assert_feed_matches_the_view_table(&app, &report).await;
    app.finish().await;
}

/// Waits until the broker's metadata no longer has `topic`: a record sent before could still
/// be acknowledged by a partition being deleted, and be lost with it.
async fn wait_until_gone(app: &TestApp, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client(&app.cfg).create().expect("client");
    let deadline = Instant::now() + NOTICE;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let present = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} is still there {NOTICE:?} after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the metric series `series` (name and labels) on the `/metrics` of the
/// processor at `addr`, if it has one.
async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let metrics = http_get(addr, "/metrics").await;
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a metric value"))
}

/// `event_updater_records_published_total` of records acknowledged on `topic` (`reply`,
/// `changes`, `view`, …) by the processor at `addr`: 0 when it has published none.
async fn published(addr: SocketAddr, topic: &str) -> f64 {
    let series = format!("{}{{topic=\"{topic}\"}}", metrics::PUBLISHED);
    metric(addr, &series).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_feed_topics_empty_nothing_is_published_and_commands_are_answered() {
    let app = TestApp::resources_with(|c| {
        c.changes_topic = String::new();
        c.view_topic = String::new();
    })
    .await;
    // A processor of its own (a child process), so that its metrics count its records alone.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let child = app
        .start_child("feed-off", &[("HTTP_ADDR", &addr.to_string())])
        .await;
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    let event = Uuid::new_v4().to_string();
    let created = app.call(&command("off-1", &event, "a")).await;
    let updated = app.call(&command("off-2", &event, "b")).await;
    assert_eq!((created.status(), updated.status()), (201, 200));
    // Counted once the acker has the batch's acknowledgements, which may be just after the
    // reply was read.
    let deadline = Instant::now() + NOTICE;
    while published(addr, "reply").await < 2.0 {
        assert!(Instant::now() < deadline, "replies are counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for topic in ["changes", "view"] {
        assert_eq!(
            published(addr, topic).await,
            0.0,
            "{topic} records published"
        );
    }
    // No topic of the test's but its command, reply and dead-letter topics.
    let admin: AdminClient<DefaultClientContext> = client(&app.cfg).create().expect("client");
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let mut ours: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|t| t.contains(&app.cfg.kafka_group_id))
        .collect();
    ours.sort_unstable();
    let mut expected = [
        app.cfg.command_topic.as_str(),
        app.cfg.reply_topic.as_str(),
        app.cfg.dlq_topic.as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(ours, expected);
    drop(admin);
    child
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_changes_topic_holds_commits_back_and_the_feed_resumes_without_a_gap() {
    let app = TestApp::spawn().await;
    let addr = app.app.as_ref().expect("in process").http_addr();
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    let event = Uuid::new_v4().to_string();
    assert_eq!(app.call(&command("c-0", &event, "a0")).await.status(), 201);
    wait_for_committed(&app, 1).await;
    // A reader that had read the feed so far.
    let (before, _) = read_changes(&app).await;
    assert_eq!(before.len(), 1);

    let changes_topic = app.cfg.changes_topic.clone();
    delete_topic(&app, &changes_topic).await;
    wait_until_gone(&app, &changes_topic).await;
    // Updates of the event and three new events, sent while the topic is gone.
    let mut ids = Vec::new();
    for i in 1..=3 {
        let id = format!("c-{i}");
        app.send(&command(&id, &event, &format!("a{i}"))).await;
        ids.push(id);
    }
    for i in 0..3 {
        let id = format!("n-{i}");
        app.send(&command(&id, &Uuid::new_v4().to_string(), "n"))
            .await;
        ids.push(id);
    }
    wait_for_status(addr, "/readyz", 503, NOTICE).await;
    let why = http_get(addr, "/readyz").await;
    assert!(why.contains("changes topic"), "{why}");
    // Long enough for several auto-commits (every 500 ms): none may move past a command
    // whose change is not acknowledged.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let committed: i64 = app
        .committed_offsets()
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw().filter(|o| *o >= 0))
        .sum();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert!(applied > 1, "no command applied while the topic was gone");
    assert_eq!(
        committed, 1,
        "commands committed while their changes could not be published ({applied} changes applied)"
    );

    recreate_topic(&app, &changes_topic).await;
    let collector = app.collect_replies();
    collector
        .wait_for_all(&ids, NOTICE)
        .await
        .expect("every command is answered");
    wait_for_committed(&app, 1 + ids.len() as i64).await;
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    drop(collector);
    // The reader goes on with the topic created again: no gap.
    let after = read_topic(&app.cfg, &changes_topic)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_schema_version(&after, "change");
    let read: Vec<FeedRecord> = before.into_iter().chain(after).collect();
    let report = check_changes(&read).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.distinct(), 1 + ids.len());
    assert_feed_matches_the_view_table(&app, &report).await;
    app.finish().await;
}
