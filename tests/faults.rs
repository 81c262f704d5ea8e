//! Faults, for real: `kill -9`, SIGTERM, PostgreSQL closed to connections, a broker outage,
//! processors joining and dying in one group. After each, every command is applied once or
//! rejected once, and every command has a reply (identical where it has two).
//!
//! Sizes are environment variables, so that a soak run can be longer than the test suite:
//! `FAULT_COMMANDS` (default 3000), `FAULT_EVENTS` (200), `FAULT_KILLS` (3),
//! `FAULT_PG_OUTAGE_SECS` (30), `FAULT_BROKER_OUTAGE_SECS` (10).

mod common;

use std::time::Duration;

use common::exactly_once::{assert_exactly_once, env_or, load, send_paced, Rng};
use common::{http_status, on_mock_cluster, ReplyCollector, TestApp};
use rdkafka::mocking::MockCluster;

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
    let collector = ReplyCollector::start(app.new_reader(&app.cfg.reply_topic));
    let waits: Vec<u64> = (0..kills).map(|_| 300 + rng.below(1500)).collect();
    let killer = async {
        let mut child = app.start_child("p0", &[]).await;
        for (k, wait) in waits.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(*wait)).await;
            println!(
                "kill -9 after {wait} ms; {} answered so far",
                collector.answered()
            );
            child.kill9().await;
            // The replacement starts once the dead member's session (6 s) has expired, as a
            // restarted container would. (tansu 0.6 rebalances a group only when a member
            // joins, not when a session expires: a replacement joining earlier can leave
            // partitions assigned to the dead member for good. Kafka does not have this gap.)
            tokio::time::sleep(Duration::from_millis(6500)).await;
            child = app.start_child(&format!("p{}", k + 1), &[]).await;
        }
        child
    };
    let ((), child) = tokio::join!(send_paced(&app, &l, Duration::from_millis(700)), killer);
    collector
        .wait_for_all(&l.ids, Duration::from_secs(240))
        .await;
    let (status, _) = child.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    let replies = collector.stop().await;
    println!("faults injected: {kills} kill -9");
    assert_exactly_once(&app, &l, &replies).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_and_exits_0_within_the_bound() {
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| c.max_batch = 200).await;
    let l = load(
        &mut rng,
        env_or("FAULT_COMMANDS", 3000) / 2,
        env_or("FAULT_EVENTS", 200),
    );
    let collector = ReplyCollector::start(app.new_reader(&app.cfg.reply_topic));
    let first = app
        .start_child("t0", &[("SHUTDOWN_TIMEOUT_SECS", "30")])
        .await;
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, took) = first.terminate(Duration::from_secs(35)).await;
        println!(
            "SIGTERM: exit {status} after {took:?}; {} answered so far",
            collector.answered()
        );
        assert!(status.success(), "exit status {status}");
        assert!(took < Duration::from_secs(30));
    };
    tokio::join!(send_paced(&app, &l, Duration::from_millis(50)), stopper);
    let second = app.start_child("t1", &[]).await;
    collector
        .wait_for_all(&l.ids, Duration::from_secs(120))
        .await;
    assert!(second.terminate(Duration::from_secs(30)).await.0.success());
    let replies = collector.stop().await;
    assert_exactly_once(&app, &l, &replies).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_joining_and_dying_in_one_group_lose_and_double_nothing() {
    let mut rng = Rng::new();
    // librdkafka's mock cluster, not tansu: tansu 0.6 does not rebalance a group when a member's
    // session expires (only when another member joins), so a killed member's partitions would
    // wait for the next join. The processors are child processes that reach the mock cluster
    // over its local port.
    let cluster = MockCluster::new(1).expect("mock cluster");
    let app = TestApp::resources_with(|c| {
        c.max_batch = 100;
        c.topic_partitions = 6;
        on_mock_cluster(&cluster, c);
    })
    .await;
    let l = load(
        &mut rng,
        env_or("FAULT_COMMANDS", 3000),
        env_or("FAULT_EVENTS", 200),
    );
    let collector = ReplyCollector::start(app.new_reader(&app.cfg.reply_topic));
    let n = l.ids.len();
    let churn = async {
        let a = app.start_child("g1", &[]).await;
        let b = app.start_child("g2", &[]).await;
        collector
            .wait_for_count(n / 5, Duration::from_secs(60))
            .await;
        let c = app.start_child("g3", &[]).await;
        println!(
            "third processor joined; {} answered so far",
            collector.answered()
        );
        collector
            .wait_for_count(n * 2 / 5, Duration::from_secs(60))
            .await;
        a.kill9().await;
        println!(
            "first processor killed; {} answered so far",
            collector.answered()
        );
        (b, c)
    };
    let ((), (b, c)) = tokio::join!(send_paced(&app, &l, Duration::from_millis(300)), churn);
    collector
        .wait_for_all(&l.ids, Duration::from_secs(180))
        .await;
    assert!(b.terminate(Duration::from_secs(30)).await.0.success());
    assert!(c.terminate(Duration::from_secs(30)).await.0.success());
    let replies = collector.stop().await;
    println!("faults injected: 1 join, 1 kill -9 (rebalances)");
    assert_exactly_once(&app, &l, &replies).await;
    app.finish().await;
    drop(cluster);
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
    let l = load(
        &mut rng,
        env_or("FAULT_COMMANDS", 3000) / 2,
        env_or("FAULT_EVENTS", 200),
    );
    let collector = ReplyCollector::start(app.new_reader(&app.cfg.reply_topic));
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        // Under load: the fault lands once commands are being answered.
        collector.wait_for_count(100, Duration::from_secs(60)).await;
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
        let mut saw_not_ready = false;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if http_status(addr, "/readyz").await == 503 {
                saw_not_ready = true;
                break;
            }
        }
        assert!(
            saw_not_ready,
            "/readyz should say 503 while the database is away"
        );
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
    collector
        .wait_for_all(&l.ids, Duration::from_secs(120))
        .await;
    assert_eq!(http_status(addr, "/readyz").await, 200);
    let replies = collector.stop().await;
    println!("faults injected: PostgreSQL closed for {outage:?}");
    assert_exactly_once(&app, &l, &replies).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_under_load_loses_nothing_and_replies_arrive_after_it() {
    let outage = Duration::from_secs(env_or("FAULT_BROKER_OUTAGE_SECS", 10));
    let mut rng = Rng::new();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let app = TestApp::spawn_with(|c| {
        c.max_batch = 200;
        on_mock_cluster(&cluster, c);
    })
    .await;
    let l = load(
        &mut rng,
        env_or("FAULT_COMMANDS", 3000) / 2,
        env_or("FAULT_EVENTS", 200),
    );
    let collector = ReplyCollector::start(app.new_reader(&app.cfg.reply_topic));
    let fault = async {
        collector.wait_for_count(100, Duration::from_secs(60)).await;
        cluster.broker_down(1).expect("broker down");
        println!("broker down; {} answered so far", collector.answered());
        tokio::time::sleep(outage).await;
        cluster.broker_up(1).expect("broker up");
        println!(
            "broker up after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(&app, &l, Duration::from_millis(100)), fault);
    collector
        .wait_for_all(&l.ids, Duration::from_secs(180))
        .await;
    let replies = collector.stop().await;
    println!("faults injected: broker down for {outage:?}");
    assert_exactly_once(&app, &l, &replies).await;
    app.finish().await;
    drop(cluster);
}

/// Points `c` at `cluster` and creates the test's topics there.
async fn admin_connection(base: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("admin connection")
}
