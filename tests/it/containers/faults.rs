//! Faults only containers can make, under load: PostgreSQL or the broker cut off by the
//! network, and `docker stop` in the middle of a batch; after each, nothing lost or doubled.

use std::time::Duration;

use super::docker::docker_ready;
use super::stack::{assert_feed_whole, Stack};
use crate::support::exactly_once::{
    assert_exactly_once, env_or, fault_load, send_paced, wait_for_all_or_explain, Rng,
};
use crate::support::wait_for_status;

fn outage() -> Duration {
    Duration::from_secs(env_or("CONTAINER_OUTAGE_SECS", 30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing() {
    let test = "pgcut";
    if !docker_ready(
        "faults::postgres_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing",
    ) {
        return;
    }
    let outage = outage();
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let p = stack.start_processor(stack.processor(), "p").await;
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        stack.disconnect(&stack.postgres_name);
        println!(
            "PostgreSQL disconnected; {} answered so far",
            collector.answered()
        );
        // /readyz says 503 while PostgreSQL is cut off.
        wait_for_status(p.http, "/readyz", 503, Duration::from_secs(10)).await;
        let during = collector.answered();
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(10))).await;
        assert_eq!(
            collector.answered(),
            during,
            "nothing is answered while PostgreSQL is cut off"
        );
        tokio::time::sleep(Duration::from_secs(10).min(outage)).await;
        stack.reconnect(&stack.postgres_name, &stack.postgres_ip);
        println!(
            "PostgreSQL reconnected after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(app, &l, Duration::from_millis(pace)), fault);
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(240)).await;
    wait_for_status(p.http, "/readyz", 200, Duration::from_secs(30)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        &format!("PostgreSQL cut off (docker network disconnect) for {outage:?}"),
    )
    .await;
    let (code, _) = p.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    p.remove().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing() {
    let test = "brokercut";
    if !docker_ready(
        "faults::the_broker_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing",
    ) {
        return;
    }
    let outage = outage();
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    // The stack's session timeout (6 s), so the cut outlasts it: Kafka's group coordinator
    // expires the processor's membership during the cut, and after it the processor's next
    // heartbeat is refused (unknown member): it loses its partitions, rejoins, and resumes from
    // the committed offsets, redelivering what it had applied but not committed. Connection
    // attempts give up after 5 s (librdkafka's default, 30 s, can leave an attempt started
    // during the cut hanging well after it).
    let image = stack.processor().with_env(
        "KAFKA_PROPERTIES",
        "session.timeout.ms=6000;heartbeat.interval.ms=500;socket.connection.setup.timeout.ms=5000",
    );
    let p = stack.start_processor(image, "p").await;
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        stack.disconnect(&stack.broker_name);
        println!(
            "Kafka disconnected; {} answered so far",
            collector.answered()
        );
        // Replies in flight at the cut may still arrive for a moment; after that, none can.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = collector.answered();
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(5))).await;
        assert_eq!(
            collector.answered(),
            during,
            "nothing arrives while Kafka is cut off"
        );
        stack.reconnect(&stack.broker_name, &stack.broker_ip);
        println!(
            "Kafka reconnected after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(app, &l, Duration::from_millis(pace)), fault);
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(300)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        &format!("Kafka cut off (docker network disconnect) for {outage:?}"),
    )
    .await;
    let (code, _) = p.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    p.remove().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_in_the_middle_of_a_batch_then_a_new_container_loses_and_doubles_nothing() {
    let test = "stop";
    if !docker_ready(
        "faults::docker_stop_in_the_middle_of_a_batch_then_a_new_container_loses_and_doubles_nothing",
    ) {
        return;
    }
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let first = stack
        .start_processor(
            stack.processor().with_env("SHUTDOWN_TIMEOUT_SECS", "30"),
            "a",
        )
        .await;
    let n = l.ids.len();
    let stopper = async {
        // In the middle of the load: a quarter answered, more keep coming.
        collector
            .wait_for_count(n / 4, Duration::from_secs(60))
            .await
            .expect("replies");
        let (code, took) = first.docker_stop(45).await;
        let answered = collector.answered();
        println!("docker stop: exit code {code} after {took:?}; {answered} of {n} answered so far");
        assert!(
            answered < n,
            "the stop landed after the load: nothing was tested"
        );
        assert_eq!(
            code, 0,
            "SIGTERM is handled: exit code 0, not SIGKILL's 137"
        );
        assert!(took < Duration::from_secs(30), "{took:?}");
    };
    // 100 commands every 300 ms: about 5 s of load.
    tokio::join!(send_paced(app, &l, Duration::from_millis(300)), stopper);
    first.remove().await;
    let second = stack.start_processor(stack.processor(), "b").await;
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(180)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        "docker stop mid-load, a new container on the same database",
    )
    .await;
    let (code, _) = second.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    second.remove().await;
    stack.finish().await;
}
