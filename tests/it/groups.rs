//! Consumer groups on Kafka's own group coordinator, under both group protocols
//! (`KAFKA_GROUP_PROTOCOL`): the classic protocol with the cooperative-sticky assignor, and
//! KIP-848's consumer protocol. Each scenario runs once per protocol:
//!
//! - a member joins a group answering a steady load, and later another member is killed with
//!   `kill -9` (12 partitions, `GROUP_COMMANDS` commands, default 10,000, over `GROUP_EVENTS`
//!   events, default 500, sent in small batches over `GROUP_LOAD_SECS`, default 60);
//! - a member frozen (SIGSTOP) with a batch in hand loses its partitions, and is thawed after
//!   their new owner has answered its commands: its late write is fenced.
//!
//! Each asserts the exactly-once promise only (nothing lost, nothing applied twice, versions
//! 1..n in production order). The first also prints, per protocol, the longest time without an
//! answer around the join and around the kill, from the replies' CreateTime
//! ([`crate::support::gaps`]): `GAP protocol=... event=... longest_gap_ms=...`. Times are
//! printed, never asserted. The members are child processes (`TestApp::start_child`): under the
//! classic protocol with a 6 s session and a 500 ms heartbeat, under the consumer protocol with
//! the broker's, which deploy/kafka/server.properties sets to the same.
//!
//! What the processor does with classic-only librdkafka properties under the consumer protocol
//! (it leaves them out of the consumer, with a warning) and with a `group.protocol` property
//! that contradicts `KAFKA_GROUP_PROTOCOL` (it refuses to start) is checked here too, on real
//! child processes.

use std::time::{Duration, Instant};

use event_updater::config::GroupProtocol;
use event_updater_harness::process::Processor;
use serde_json::json;

use crate::faults::wait_for_blocked_reads;
use crate::support::exactly_once::{
    assert_exactly_once, env_or, fault_load, load, wait_for_all_or_explain, Load, Rng,
};
use crate::support::gaps::{self, Window};
use crate::support::TestApp;

/// Partitions of the command topic in the join-and-kill scenario: three members share them.
const GROUP_PARTITIONS: i32 = 12;
/// How long after a join, and after a kill, the gaps are looked for: the rebalance a join
/// causes, and the 6 s session of a killed member and the rebalance after it, fit well within.
const JOIN_WINDOW: Duration = Duration::from_secs(15);
const KILL_WINDOW: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_a_member_joins_and_another_is_killed_9_under_load_losing_and_doubling_nothing() {
    join_and_kill_under_load(GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_a_member_joins_and_another_is_killed_9_under_load_losing_and_doubling_nothing() {
    join_and_kill_under_load(GroupProtocol::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_a_frozen_member_thawed_after_its_partitions_moved_is_fenced_and_doubles_nothing() {
    frozen_member_thawed(GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_a_frozen_member_thawed_after_its_partitions_moved_is_fenced_and_doubles_nothing()
{
    frozen_member_thawed(GroupProtocol::Consumer).await;
}

/// Two members share 12 partitions and answer a steady load; a third joins; later the first is
/// killed with `kill -9`. Every command is answered once, versions run 1..n; the longest time
/// without an answer is printed for a stretch before the join (the load's own rhythm), around
/// the join, and around the kill.
async fn join_and_kill_under_load(protocol: GroupProtocol) {
    let n = env_or("GROUP_COMMANDS", 10_000);
    let events = env_or("GROUP_EVENTS", 500);
    let over = Duration::from_secs(env_or("GROUP_LOAD_SECS", 60));
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| {
        c.max_batch = 100;
        c.topic_partitions = GROUP_PARTITIONS;
        c.kafka_group_protocol = protocol;
    })
    .await;
    let l = load(&mut rng, n, events);
    let collector = app.collect_replies();
    let m1 = app.start_child("m1", &[]).await;
    let m2 = app.start_child("m2", &[]).await;
    wait_for_settled(&[&m1, &m2], Duration::from_secs(60)).await;
    println!(
        "protocol={protocol}: m1 and m2 share the partitions; sending {n} commands over {over:?}"
    );

    let started = Instant::now();
    let load_from = gaps::now_ms();
    let churn = async {
        tokio::time::sleep_until((started + over / 5).into()).await;
        let joining = gaps::now_ms();
        let m3 = app.start_child("m3", &[]).await;
        let joined = gaps::now_ms();
        println!(
            "m3 subscribed {} ms after it was started; {} answered so far",
            joined - joining,
            collector.answered()
        );
        tokio::time::sleep(JOIN_WINDOW + Duration::from_secs(2)).await;
        println!(
            "partitions held before the kill: m1 {:?}, m2 {:?}, m3 {:?}",
            assigned(&m1),
            assigned(&m2),
            assigned(&m3)
        );
        let killed = gaps::now_ms();
        m1.kill9().await.expect("kill -9");
        println!("m1 killed (-9); {} answered so far", collector.answered());
        (m3, joining, joined, killed)
    };
    let (sent, (m3, joining, joined, killed)) = tokio::join!(send_steadily(&app, &l, over), churn);
    let load_to = gaps::now_ms();
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(300)).await;
    println!(
        "partitions held at the end: m2 {:?}, m3 {:?}",
        assigned(&m2),
        assigned(&m3)
    );

    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let windows = [
        (
            "steady",
            Window {
                from_ms: load_from + 2_000,
                to_ms: joining,
            },
        ),
        (
            "join",
            Window {
                from_ms: joined,
                to_ms: joined + ms(JOIN_WINDOW),
            },
        ),
        (
            "kill",
            Window {
                from_ms: killed,
                to_ms: killed + ms(KILL_WINDOW),
            },
        ),
    ];
    let answered = collector.answered_at();
    for (event, window) in windows {
        println!(
            "{}",
            gaps::report(protocol.as_str(), event, &sent, &answered, window)
        );
        if window.to_ms > load_to {
            println!("(the load ended {} ms before this window did: the end of the window shows the load's end too)", window.to_ms - load_to);
        }
    }

    for m in [m2, m3] {
        m.stop(Duration::from_secs(30))
            .await
            .expect("the processor stops cleanly");
    }
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!(
            "protocol={protocol}: 1 join, 1 kill -9 under load, {GROUP_PARTITIONS} partitions"
        ),
    )
    .await;
    app.finish().await;
}

/// A zombie: member A is frozen (SIGSTOP) in the middle of a batch, after reading the rows it
/// decides on and before writing; the group gives its partitions to member B once A's session
/// has expired (6 s, the client's under the classic protocol, the broker's under the consumer
/// protocol), and B applies the same commands and more; then A is thawed (SIGCONT) with its
/// batch in hand, decided on stale rows. Its late write must not land: the database's fence
/// refuses it, and the batch decided again gets the stored replies B wrote. Kafka fences A as
/// well: its assignment is lost, and it rejoins as a new member. Nothing doubled, versions
/// 1..n, the view a fold of the log, and every command answered (identically where twice).
///
/// How A is caught mid-batch: the test holds an exclusive lock on `api_tokens`, which only the
/// batch's read of its grants, stored replies and views takes (the read the batch is decided
/// on; not the lane's size lookup before it, nor the applied offsets), so that read waits in
/// PostgreSQL; once `pg_stat_activity` shows it waiting, A is frozen and the lock released. A's
/// read then completes in PostgreSQL and its answer waits in A's socket. A's lock timeout is
/// raised, so that its read waits for the test rather than give up.
async fn frozen_member_thawed(protocol: GroupProtocol) {
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| {
        c.max_batch = 200;
        c.kafka_group_protocol = protocol;
    })
    .await;
    let l = fault_load(&mut rng, 2);
    let n = l.records.len();
    let (first, second, third) = (
        &l.records[..n / 3],
        &l.records[n / 3..2 * n / 3],
        &l.records[2 * n / 3..],
    );
    let collector = app.collect_replies();
    let a = app
        .start_child(
            "zombie",
            &[
                ("RUST_LOG", "info,event_updater::store=debug"),
                ("DATABASE_LOCK_TIMEOUT", "60s"),
            ],
        )
        .await;
    app.send_many(first).await;
    collector
        .wait_for_all(&l.ids[..n / 3], Duration::from_secs(60))
        .await
        .expect("replies");

    // A's next batch waits for its read of grants, stored replies and views.
    let mut lock = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    app.send_many(second).await;
    let waiting = wait_for_blocked_reads(&app).await;
    a.signal("STOP").expect("kill");
    // The reads may complete only once every thread of A has stopped: a thread still running
    // would take the answer and write at once, before any other member could.
    let stopping = wait_until_stopped(a.pid()).await;
    lock.rollback().await.expect("unlock");
    println!(
        "protocol={protocol}: A (pid {}) frozen ({stopping:?} after SIGSTOP) with {waiting} batch read(s) waiting; {} answered so far",
        a.pid(),
        collector.answered()
    );

    // B takes A's partitions once A's session (6 s) expires, and answers the second part.
    let b = app.start_child("heir", &[]).await;
    collector
        .wait_for_all(&l.ids[..2 * n / 3], Duration::from_secs(120))
        .await
        .expect("replies");
    println!(
        "B answered everything A held; {} answered so far; thawing A",
        collector.answered()
    );
    a.signal("CONT").expect("kill");
    // The rest flows on (to B, and to A once it has rejoined the group).
    app.send_many(third).await;
    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(120)).await;
    let log_a = a.log();
    a.stop(Duration::from_secs(35))
        .await
        .expect("the processor stops cleanly");
    b.stop(Duration::from_secs(35))
        .await
        .expect("the processor stops cleanly");
    // The premise: A really wrote a batch decided on stale rows, and the fence refused it.
    let refused = log_a.matches("a write fence tripped").count();
    let lost = log_a.matches("partitions lost").count();
    println!(
        "A's late writes refused by the fence: {refused}; A told its partitions were lost: {lost}"
    );
    assert!(
        refused > 0,
        "A never wrote its stale batch; the test did not make a zombie"
    );
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!("protocol={protocol}: SIGSTOP mid-batch, partitions moved, SIGCONT"),
    )
    .await;
    app.finish().await;
}

/// One configuration for either protocol: a member told to use the consumer protocol, with the
/// classic protocol's session and heartbeat in `KAFKA_PROPERTIES` (which librdkafka would refuse
/// under it), leaves them out of its consumer, says so, and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_leaves_classic_session_properties_out_with_a_warning_and_answers() {
    let app = TestApp::resources_with(|c| c.kafka_group_protocol = GroupProtocol::Consumer).await;
    let child = app
        .start_child(
            "warned",
            &[(
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000;heartbeat.interval.ms=500",
            )],
        )
        .await;
    let event = uuid::Uuid::new_v4().to_string();
    let reply = app
        .call(&json!({"request_id": "after-warning", "event_uuid": event,
            "body": {"action": "model_updated", "app": "groups"}}))
        .await;
    assert_eq!(reply.status(), 201, "{:?}", reply.value);
    let log = child.log();
    for property in ["session.timeout.ms", "heartbeat.interval.ms"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("does not take; left out of the consumer")
                && l.contains(&format!("property={property}"))),
            "no warning about {property} in:\n{log}"
        );
    }
    child
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    app.finish().await;
}

/// A `group.protocol` in `KAFKA_PROPERTIES` that contradicts `KAFKA_GROUP_PROTOCOL` stops the
/// start, before anything connects, with a message that names the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_protocol_property_contradicting_the_option_stops_the_start() {
    let app = TestApp::resources_with(|_| {}).await;
    let mut cmd = app.binary();
    cmd.arg("serve")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("KAFKA_GROUP_PROTOCOL", "classic")
        .env("KAFKA_PROPERTIES", "group.protocol=consumer")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the processor exits instead of serving")
        .expect("the processor runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "KAFKA_PROPERTIES sets group.protocol=consumer, but KAFKA_GROUP_PROTOCOL is classic"
        ),
        "{stderr}"
    );
    app.finish().await;
}

/// Sends the load in batches of 25, evenly over `over`, so that answers flow all through the
/// joins and kills (a batch waits for the one before it to be delivered). Returns each
/// command's request id with when its batch was handed to the producer.
async fn send_steadily(app: &TestApp, l: &Load, over: Duration) -> Vec<(String, i64)> {
    const CHUNK: usize = 25;
    let chunks = u32::try_from(l.records.len().div_ceil(CHUNK).max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(over / chunks);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::with_capacity(l.ids.len());
    for (records, ids) in l.records.chunks(CHUNK).zip(l.ids.chunks(CHUNK)) {
        tick.tick().await;
        let at = gaps::now_ms();
        app.send_many(records).await;
        sent.extend(ids.iter().map(|id| (id.clone(), at)));
    }
    sent
}

/// Waits until every thread of process `pid` is stopped (state `T` in `/proc`), as a SIGSTOP
/// leaves them: how long that took. Panics after 10 s.
async fn wait_until_stopped(pid: u32) -> Duration {
    let started = Instant::now();
    let tasks = format!("/proc/{pid}/task");
    loop {
        let states: Vec<String> = std::fs::read_dir(&tasks)
            .expect("the process's threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            // The state follows the command name, which is in parentheses.
            .filter_map(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()?.to_string()))
            .collect();
        if !states.is_empty() && states.iter().all(|s| s == "T" || s == "t") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "process {pid} not stopped 10 s after SIGSTOP: thread states {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many partitions `member` holds, as its log last said (`partitions assigned ...
/// assigned=N` or `revocation done assigned=N`); `None` before its first assignment.
pub(crate) fn assigned(member: &Processor) -> Option<usize> {
    member
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned") || l.contains("revocation done"))
        .and_then(|l| l.split(" assigned=").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// Waits until every one of `members` holds partitions and together they hold each of the
/// command topic's partitions once; panics with what each holds after `bound`.
async fn wait_for_settled(members: &[&Processor], bound: Duration) {
    let deadline = Instant::now() + bound;
    let want = usize::try_from(GROUP_PARTITIONS).unwrap_or(0);
    loop {
        let held: Vec<Option<usize>> = members.iter().map(|m| assigned(m)).collect();
        if held.iter().all(|h| h.is_some_and(|h| h > 0))
            && held.iter().flatten().sum::<usize>() == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle within {bound:?}: partitions held {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
