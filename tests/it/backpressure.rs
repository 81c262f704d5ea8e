//! Backpressure on Apache Kafka and PostgreSQL, under both group protocols: a member whose
//! in-flight budget is spent because its database is down pauses its partitions and keeps
//! polling, so it stays in the group past `max.poll.interval.ms` and hands partitions over to a
//! member that joins meanwhile; when the database returns, nothing is lost or doubled.
//!
//! A second scenario has the joining member leave again during the outage, so that the
//! partitions it took come back to the first member while records fetched before their
//! revocation are still queued there (the revocation's wait for them timed out): those records
//! are dropped rather than applied again (no more replies are delivered twice than m1's lanes
//! held in hand), and no committed offset ever moves backwards (the group's committed offsets
//! are sampled all along).
//!
//! The database goes down for one member only: that member reaches PostgreSQL through a TCP
//! proxy of the test's own ([`PgProxy`]), which the test cuts (every connection closed, new ones
//! closed at once) and restores, while the shared PostgreSQL keeps serving everyone else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_updater::config::GroupProtocol;
use event_updater_harness::process::Processor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::exactly_once::{assert_exactly_once, load, wait_for_all_or_explain, Rng};
use crate::support::TestApp;

/// The members' `max.poll.interval.ms`: short, so that the outage outlasts it twice over.
const MAX_POLL_INTERVAL_MS: u64 = 7_000;
/// The session: the client's under the classic protocol (`start_child`'s), the broker's
/// (deploy/kafka/server.properties) under the consumer protocol.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// The budget of the member whose database goes down: a few dozen of the test's commands.
const SMALL_BUDGET: &str = "65536";
/// Commands answered before the outage, and sent during it.
const BEFORE: u64 = 300;
const DURING: u64 = 900;
/// Of those sent during the outage, how many go a dozen at a time.
const TRICKLE: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_a_member_whose_database_is_down_stays_in_the_group_and_hands_partitions_over() {
    database_down_past_the_poll_interval(GroupProtocol::Classic, Joiner::Stays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_a_member_whose_database_is_down_stays_in_the_group_and_hands_partitions_over() {
    database_down_past_the_poll_interval(GroupProtocol::Consumer, Joiner::Stays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_partitions_coming_back_with_old_records_queued_never_move_an_offset_backwards() {
    database_down_past_the_poll_interval(GroupProtocol::Classic, Joiner::Leaves).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_partitions_coming_back_with_old_records_queued_never_move_an_offset_backwards() {
    database_down_past_the_poll_interval(GroupProtocol::Consumer, Joiner::Leaves).await;
}

/// What the member that joins during the outage does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joiner {
    /// It stays to the end.
    Stays,
    /// It leaves (SIGTERM) during the outage, so its partitions go back to m1.
    Leaves,
}

/// Member m1 answers a first part of the load; then its database goes down and the rest is
/// sent, more than its budget holds; m2 joins during the outage. m1 stays in the group (no
/// lost assignment, no poll interval exceeded) though the outage lasts twice
/// `max.poll.interval.ms`; m2 is given partitions within the session timeout of its joining;
/// once the database is back every command is answered, none applied twice, versions 1..n.
/// With [`Joiner::Leaves`], m2 leaves during the outage: m1 gets its partitions back while
/// their earlier records are still queued in its lanes, drops those, and no committed offset
/// moves backwards.
async fn database_down_past_the_poll_interval(protocol: GroupProtocol, joiner: Joiner) {
    let mut rng = Rng::new();
    let app = TestApp::resources_with(|c| {
        c.topic_partitions = 6;
        // Small batches: the batch a lane holds while the database is down is a few records,
        // the rest of what was admitted stays queued behind it.
        c.max_batch = 5;
        c.kafka_group_protocol = protocol;
    })
    .await;
    let l = load(&mut rng, BEFORE + DURING, 60);
    let split = usize::try_from(BEFORE).unwrap_or(0);
    let proxy = PgProxy::start(&app).await;
    let properties = match protocol {
        GroupProtocol::Classic => format!(
            "session.timeout.ms={};heartbeat.interval.ms=500;max.poll.interval.ms={MAX_POLL_INTERVAL_MS}",
            SESSION_TIMEOUT.as_millis()
        ),
        GroupProtocol::Consumer => format!("max.poll.interval.ms={MAX_POLL_INTERVAL_MS}"),
    };
    let env = |database_url: &str| -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), database_url.into()),
            ("KAFKA_PROPERTIES".into(), properties.clone()),
        ]
    };
    let collector = app.collect_replies();
    let offsets = OffsetWatch::start(&app);
    let mut m1_env = env(&proxy.database_url(&app));
    m1_env.push(("MAX_IN_FLIGHT_BYTES".into(), SMALL_BUDGET.into()));
    let mut m1 = app.start_child("m1", &borrowed(&m1_env)).await;
    wait_for_partitions(&mut m1, Duration::from_secs(60)).await;
    app.send_many(&l.records[..split]).await;
    collector
        .wait_for_all(&l.ids[..split], Duration::from_secs(60))
        .await
        .expect("the first part is answered");

    let cut = Instant::now();
    proxy.cut();
    // A trickle first, a dozen at a time, so that what m1 admits before its budget is spent
    // (and keeps queued behind the batch each lane holds) comes from every partition; then the
    // rest at once.
    let trickle = (split + TRICKLE).min(l.records.len());
    for chunk in l.records[split..trickle].chunks(12) {
        app.send_many(chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.send_many(&l.records[trickle..]).await;
    m1.wait_for_log("database unavailable", Duration::from_secs(30))
        .await
        .expect("m1 finds its database down");
    println!(
        "protocol={protocol}: m1's database is down; {} of {} answered",
        collector.answered(),
        l.ids.len()
    );

    let mut m2 = app
        .start_child("m2", &borrowed(&env(&app.cfg.database_url)))
        .await;
    let subscribed = Instant::now();
    wait_for_partitions(&mut m2, SESSION_TIMEOUT).await;
    println!(
        "m2 was given partitions {:?} after it subscribed, {:?} after m1's database went down",
        subscribed.elapsed(),
        cut.elapsed()
    );
    let all = usize::try_from(app.cfg.topic_partitions).unwrap_or(0);
    let m2 = match joiner {
        Joiner::Stays => Some(m2),
        Joiner::Leaves => {
            assert_shared(&m2.log(), all);
            collector
                .wait_for_count(BEFORE as usize + 1, Duration::from_secs(30))
                .await
                .expect("m2 answers");
            m2.stop(Duration::from_secs(40))
                .await
                .expect("m2 stops cleanly");
            let back = Instant::now() + SESSION_TIMEOUT * 2;
            while assignments(&m1.log()) < 2 {
                assert!(
                    Instant::now() < back,
                    "m1 did not get its partitions back:\n{}",
                    m1.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "m2 left; m1 has its partitions back {:?} after its database went down",
                cut.elapsed()
            );
            None
        }
    };
    // The outage outlasts the poll interval twice over.
    let outage = Duration::from_millis(2 * MAX_POLL_INTERVAL_MS);
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    let answered_in_outage = collector.answered();
    proxy.restore();
    println!(
        "database back after {:?}; {answered_in_outage} of {} answered by then",
        cut.elapsed(),
        l.ids.len()
    );

    wait_for_all_or_explain(&app, &collector, &l, Duration::from_secs(180)).await;
    let log1 = m1.log();
    let log2 = m2.as_ref().map(Processor::log).unwrap_or_default();
    if joiner == Joiner::Stays {
        assert_shared(&log2, all);
    }
    m1.stop(Duration::from_secs(40))
        .await
        .expect("m1 stops cleanly");
    if let Some(m2) = m2 {
        m2.stop(Duration::from_secs(40))
            .await
            .expect("m2 stops cleanly");
    }
    let backwards = offsets.stop().await;
    assert!(
        backwards.is_empty(),
        "committed offsets moved backwards: {backwards:?}"
    );
    // Answered twice: only what m1's lanes held in hand (being applied) when partitions left
    // it, which m1 finishes, fenced, once its database is back; the records queued behind
    // those are left to the partitions' next owners, not applied again.
    let twice = collector
        .records()
        .saturating_sub(u64::try_from(collector.answered()).unwrap_or(0));
    let in_hand = u64::from(app.cfg.apply_concurrency) * u64::from(app.cfg.max_batch);
    assert!(
        twice <= in_hand,
        "{twice} replies were delivered twice, more than the {in_hand} commands m1's lanes can hold in hand: records of revoked partitions queued behind them were applied again"
    );
    if joiner == Joiner::Leaves {
        // The premise: records fetched before the revocation were still queued when the
        // partitions came back, and were dropped.
        assert!(
            log1.contains("records of revoked partitions left to their owners"),
            "no record of a revoked partition was still queued in m1; the test did not make the case"
        );
    }
    for (name, log) in [("m1", &log1), ("m2", &log2)] {
        for kicked in ["partitions lost", "poll interval"] {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.to_lowercase().contains(kicked))
                .collect();
            assert!(
                lines.is_empty(),
                "{name} was put out of the group ({kicked}):\n{}",
                lines.join("\n")
            );
        }
    }
    assert!(
        log1.contains("partitions revoked"),
        "m1 handed no partition over"
    );
    assert_exactly_once(
        &app,
        &l,
        collector,
        &format!(
            "protocol={protocol}: database down for {outage:?} (max.poll.interval.ms {MAX_POLL_INTERVAL_MS}) with the budget spent, a member joining meanwhile"
        ),
    )
    .await;
    drop(proxy);
    app.finish().await;
}

/// m1 stayed in the group while m2 was in it: m2 never held every partition. (A member that
/// stops polling is put out of the group by the coordinator once the rebalance has waited
/// `max.poll.interval.ms` for it, and learns it only when it polls again: m2's assignment
/// says it first.)
fn assert_shared(m2_log: &str, all: usize) {
    let most = m2_log
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .filter_map(|l| l.split("assigned=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        most < all,
        "m2 was given all {all} partitions while m1 was running: m1 was put out of the group"
    );
}

/// How many times the log says partitions were assigned (at least one).
fn assignments(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("partitions assigned") && !l.contains("partitions=0"))
        .count()
}

/// Samples the group's committed offsets of the command topic in the background, and keeps
/// every time one moved backwards.
struct OffsetWatch {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<Vec<String>>>,
}

impl OffsetWatch {
    fn start(app: &TestApp) -> OffsetWatch {
        let group: BaseConsumer = crate::support::client(&app.cfg)
            .set("group.id", &app.cfg.kafka_group_id)
            .create()
            .expect("group client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..app.cfg.topic_partitions {
            tpl.add_partition(&app.cfg.command_topic, p);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                let mut highest: HashMap<i32, i64> = HashMap::new();
                let mut backwards = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(c) = group.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
                        for e in c.elements() {
                            let Offset::Offset(o) = e.offset() else {
                                continue;
                            };
                            let h = highest.entry(e.partition()).or_insert(o);
                            if o < *h {
                                backwards.push(format!(
                                    "partition {}: {} after {}",
                                    e.partition(),
                                    o,
                                    *h
                                ));
                            }
                            *h = (*h).max(o);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                backwards
            })
        };
        OffsetWatch {
            stop,
            task: Some(task),
        }
    }

    /// Stops sampling; every backward move seen.
    async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.task.take() {
            Some(t) => t.await.expect("the offset watch"),
            None => Vec::new(),
        }
    }
}

impl Drop for OffsetWatch {
    /// A test that failed first: the sampling thread ends too (the runtime waits for it).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until `m`'s log says it was assigned at least one partition; panics after `bound`.
async fn wait_for_partitions(m: &mut Processor, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let log = m.log();
        if log
            .lines()
            .any(|l| l.contains("partitions assigned") && !l.contains("partitions=0"))
        {
            return;
        }
        m.ensure_running().expect("the processor runs");
        assert!(
            Instant::now() < deadline,
            "no partition assigned within {bound:?}; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of PostgreSQL, for one processor: while cut, every connection through
/// it is closed and new ones are closed as soon as accepted, as a database that went away.
struct PgProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl PgProxy {
    async fn start(app: &TestApp) -> PgProxy {
        let upstream = server_address(app.database_base());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("its address");
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (open, connections) = (open.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    let mut c = connections.lock().unwrap_or_else(|e| e.into_inner());
                    c.retain(|t| !t.is_finished());
                    c.push(task);
                }
            })
        };
        PgProxy {
            addr,
            open,
            connections,
            accept,
        }
    }

    /// The test's database URL through the proxy.
    fn database_url(&self, app: &TestApp) -> String {
        let server = host_part(app.database_base());
        assert!(app.cfg.database_url.contains(server));
        app.cfg
            .database_url
            .replacen(server, &self.addr.to_string(), 1)
    }

    /// The database goes away: every connection is closed, new ones too.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for t in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// The database is back.
    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The `host[:port]` of a PostgreSQL server URL such as `postgres://user@host:port`, as
/// written.
fn host_part(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// `host:port` of a PostgreSQL server URL (the port 5432 when it names none).
fn server_address(base: &str) -> String {
    let host = host_part(base);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}
