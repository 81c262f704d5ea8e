//! Faults, for real: `kill -9`, SIGTERM (also with a batch in hand over a backlog), PostgreSQL
//! closed to connections, the Kafka process killed with `kill -9` and restarted on its data,
//! processors joining and dying in one group, a processor
//! frozen mid-batch and thawed after its partitions moved (a zombie), and a command whose write
//! keeps conflicting. After each, every command is applied once or
//! rejected once, and every command has a reply (identical where it has two).
//!
//! Sizes are environment variables, so that a soak run can be longer than the test suite:
//! `FAULT_COMMANDS` (default 3000), `FAULT_EVENTS` (200), `FAULT_KILLS` (3),
//! `FAULT_PG_OUTAGE_SECS` (30), `FAULT_BROKER_OUTAGE_SECS` (10).

use std::time::Duration;

use crate::support::exactly_once::{
    assert_exactly_once, env_or, fault_load, load, send_paced, wait_for_all_or_explain, Rng,
};
use crate::support::{http_status, wait_for_status, TestApp};
use event_updater_harness::kafka::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_then_restart_loses_and_doubles_nothing() {
    let (n, m, kills) = (
        env_or("FAULT_COMMANDS", 3000),
        env_or("FAULT_EVENTS", 200),
        env_or("FAULT_KILLS", 3),
    );
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| c.max_batch = 200).await;
    let l = load(&mut rng, n, m);
    let collector = app.collect_replies();
    let waits: Vec<u64> = (0..kills).map(|_| 300 + rng.below(1500)).collect();
    let killer = async {
        let mut child = app.start_child("p0", &[]).await;
        for (k, wait) in waits.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(*wait)).await;
            println!(
                "kill -9 after {wait} ms; {} answered so far",
                collector.answered()
            );
            child.kill9().await.expect("kill -9");
            // The replacement starts at once, as a restarted container would: the group waits
            // for the dead member until its session (6 s) expires, then gives the replacement
            // every partition.
            child = app.start_child(&format!("p{}", k + 1), &[]).await;
        }
        child
    };
    let ((), child) = tokio::join!(send_paced(&app, &l, Duration::from_millis(700)), killer);
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(240)).await;
    child
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    assert_exactly_once(&app, &l, collector, &format!("{kills} kill -9")).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_and_exits_0_within_the_bound() {
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| c.max_batch = 200).await;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let first = app
        .start_child("t0", &[("SHUTDOWN_TIMEOUT_SECS", "30")])
        .await;
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, took) = first
            .terminate(Duration::from_secs(35))
            .await
            .expect("the processor stops");
        println!(
            "SIGTERM: exit {status} after {took:?}; {} answered so far",
            collector.answered()
        );
        assert!(status.success(), "exit status {status}");
        assert!(took < Duration::from_secs(30));
    };
    tokio::join!(send_paced(&app, &l, Duration::from_millis(50)), stopper);
    let second = app.start_child("t1", &[]).await;
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(120)).await;
    second
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    assert_exactly_once(&app, &l, collector, "SIGTERM under load, then a successor").await;
    app.finish().await;
}

/// SIGTERM while a processor with a backlog has a batch in hand (its read held up by a lock the
/// test holds on `events`): it finishes that batch, leaves the rest, and commits an offset inside
/// the stream (and inside a producer's batch of records); its successor resumes there and answers
/// every command left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_backlog_leaves_the_rest_to_the_successor() {
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| c.max_batch = 5).await;
    let l = load(&mut rng, 600, 20);
    let collector = app.collect_replies();
    app.send_many(&l.records).await;
    let mut lock = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let first = app.start_child("b0", &[]).await;
    let waiting = wait_for_blocked_reads(&app).await;
    first.signal("TERM").expect("kill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.rollback().await.expect("unlock");
    let status = first
        .wait(Duration::from_secs(35))
        .await
        .expect("the processor exits");
    assert!(status.success(), "exit status {status}");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM command_replies")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    println!(
        "SIGTERM with {waiting} batch(es) in hand: the first processor handled {applied} of {}",
        l.ids.len()
    );
    let second = app.start_child("b1", &[]).await;
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(60)).await;
    second
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    assert_exactly_once(
        &app,
        &l,
        collector,
        "SIGTERM with batches in hand, then a successor",
    )
    .await;
    app.finish().await;
}

/// Waits until a processor's read of its next batch waits for a lock in PostgreSQL (a batch in
/// hand, not yet decided); returns how many such reads wait.
pub(crate) async fn wait_for_blocked_reads(app: &TestApp) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND query LIKE '%SELECT 1 AS kind%'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return waiting;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no batch read waited within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_closed_to_connections_under_load_loses_nothing() {
    let outage = Duration::from_secs(env_or("FAULT_PG_OUTAGE_SECS", 30));
    let mut rng = Rng::new();
    let app = TestApp::spawn_with(|c| c.max_batch = 200).await;
    let addr = app.app.as_ref().expect("in process").http_addr();
    let db = app
        .cfg
        .database_url
        .rsplit('/')
        .next()
        .expect("db name")
        .to_string();
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        // Under load: the fault lands once commands are being answered.
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        let mut admin = admin_connection(app.database_base()).await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false"
        ))
        .execute(&mut admin)
        .await
        .expect("close the database");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&db)
            .execute(&mut admin)
            .await
            .expect("terminate sessions");
        println!("database closed; {} answered so far", collector.answered());
        // /readyz says 503 while the database is away.
        wait_for_status(addr, "/readyz", 503, Duration::from_secs(10)).await;
        let during = collector.answered();
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(10))).await;
        assert_eq!(
            collector.answered(),
            during,
            "nothing is answered while the database is away"
        );
        tokio::time::sleep(Duration::from_secs(10).min(outage)).await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS true"
        ))
        .execute(&mut admin)
        .await
        .expect("reopen the database");
        println!(
            "database reopened after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(&app, &l, Duration::from_millis(pace)), fault);
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(120)).await;
    assert_eq!(http_status(addr, "/readyz").await, 200);
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!("PostgreSQL closed for {outage:?}"),
    )
    .await;
    app.finish().await;
}

/// The broker itself dies: its Kafka process is killed with `kill -9` under load, stays dead for
/// `FAULT_BROKER_OUTAGE_SECS`, and is started again on the same data (a test broker of its own,
/// so the shared one is untouched). Kafka recovers its logs; what it had acknowledged is there,
/// what it had not is sent again by the producers; the processor waits out the outage and
/// answers every command once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_9_under_load_and_restarted_on_its_data_loses_nothing() {
    let outage = Duration::from_secs(env_or("FAULT_BROKER_OUTAGE_SECS", 10));
    let mut rng = Rng::new();
    let mut broker = Broker::start("kill9", &[])
        .await
        .expect("a broker of the test's own");
    let app = TestApp::spawn_with(|c| {
        c.max_batch = 200;
        c.kafka_bootstrap_servers = broker.bootstrap_servers();
    })
    .await;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let fault = async {
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        broker.kill9().await.expect("kill -9 of Kafka");
        println!(
            "Kafka killed (-9); {} answered so far",
            collector.answered()
        );
        tokio::time::sleep(outage).await;
        broker.restart().await.expect("Kafka restarts on its data");
        println!(
            "Kafka up again after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(&app, &l, Duration::from_millis(100)), fault);
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(180)).await;
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!("Kafka killed -9, down for {outage:?}, restarted"),
    )
    .await;
    app.finish().await;
    drop(broker);
}

/// A command whose write conflicts every time (a trigger raises `serialization_failure` for its
/// request id, as a writer that always gets there first would) stalls nothing: after the
/// bounded attempts it is answered 409 and not applied, the commands around it are applied in
/// order, its answer is stored (a redelivery gets the same bytes and is not attempted again), and
/// the give-up is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_keeps_conflicting_is_answered_409_unapplied_within_the_bound() {
    use event_updater::pipeline::consumer::{CONFLICT_ATTEMPTS, KEPT_CONFLICTING};
    use serde_json::{json, Value};
    let app = TestApp::spawn().await;
    for statement in [
        "CREATE SEQUENCE conflicting_writes",
        "CREATE FUNCTION always_conflicts() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.request_id = 'keeps-conflicting' THEN
                 PERFORM nextval('conflicting_writes');
                 RAISE EXCEPTION 'a concurrent writer got there first (simulated)'
                     USING ERRCODE = 'serialization_failure';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER always_conflicts BEFORE INSERT ON event_log
         FOR EACH ROW EXECUTE FUNCTION always_conflicts()",
    ] {
        sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect(statement);
    }
    let event = uuid::Uuid::new_v4();
    let command = |id: &str, app: &str| {
        json!({"request_id": id, "event_uuid": event.to_string(),
               "body": {"action": "model_updated", "app": app}})
    };
    let ids = ["r1", "r2", "keeps-conflicting", "r4", "r5"];
    for (i, id) in ids.iter().enumerate() {
        app.send(&command(id, &format!("a{i}"))).await;
    }
    let mut got = std::collections::HashMap::new();
    for r in app.replies(ids.len()).await {
        got.insert(r.value["request_id"].as_str().expect("id").to_string(), r);
    }
    let statuses: Vec<(u64, Option<u64>)> = ids
        .iter()
        .map(|id| (got[*id].status(), got[*id].value["version"].as_u64()))
        .collect();
    assert_eq!(
        statuses,
        [
            (201, Some(1)),
            (200, Some(2)),
            (409, None),
            (200, Some(3)),
            (200, Some(4))
        ]
    );
    let refused = &got["keeps-conflicting"];
    assert_eq!(refused.body(), &json!({"detail": KEPT_CONFLICTING}));
    assert_eq!(
        refused.value["event_uuid"],
        Value::String(event.to_string())
    );
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/reply.schema.json"),
        )
        .expect("schema"),
    )
    .expect("schema JSON");
    assert!(
        jsonschema::validator_for(&schema)
            .expect("schema")
            .is_valid(&refused.value),
        "the 409 fits the reply schema"
    );
    let logged: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM event_log WHERE event_uuid = $1 ORDER BY version",
    )
    .bind(event)
    .fetch_all(&app.pool)
    .await
    .expect("log");
    assert_eq!(logged, ["r1", "r2", "r4", "r5"]);
    app.assert_view_is_fold_of_log().await;
    // The bound: a batch gets CONFLICT_ATTEMPTS attempts, then each command alone as many, and an
    // attempt writes at most twice (fenced, then under row locks).
    let writes: i64 = sqlx::query_scalar("SELECT last_value FROM conflicting_writes")
        .fetch_one(&app.pool)
        .await
        .expect("sequence");
    println!("the conflicting command was written {writes} times");
    let bound = i64::from(CONFLICT_ATTEMPTS);
    assert!(
        (bound..=4 * bound).contains(&writes),
        "{writes} writes of the conflicting command; the bound is {} attempts",
        2 * bound
    );
    // A redelivery gets the stored answer and is not attempted again.
    app.send(&command("keeps-conflicting", "a2")).await;
    let again = app.reply().await;
    assert_eq!(again.raw, refused.raw);
    let after: i64 = sqlx::query_scalar("SELECT last_value FROM conflicting_writes")
        .fetch_one(&app.pool)
        .await
        .expect("sequence");
    assert_eq!(after, writes);
    let addr = app.app.as_ref().expect("in process").http_addr();
    let metrics = crate::support::http_get(addr, "/metrics").await;
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("event_updater_kept_conflicting_total{scope=\"command\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(counted >= 1.0, "kept_conflicting not counted:\n{metrics}");
    app.finish().await;
}

/// A connection to the test's PostgreSQL server as its superuser.
async fn admin_connection(base: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("admin connection")
}
