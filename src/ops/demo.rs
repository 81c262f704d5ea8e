//! `event-updater demo`: the processor on this machine with nothing installed but PostgreSQL.
//!
//! Where no broker answers at the configured address, it starts librdkafka's mock cluster (a
//! Kafka-protocol broker inside this process, on a local port other clients can use), creates
//! the topics, starts the processor, sends a handful of commands (valid, invalid, conflicting,
//! redelivered), prints their replies, and keeps serving until Ctrl-C. Production points
//! `KAFKA_BOOTSTRAP_SERVERS` at a real Kafka instead.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use uuid::Uuid;

use event_updater::domain::reply::header;
use event_updater::pipeline::kafka;
use event_updater::store::tokens;
use event_updater::{Application, Config};

use super::kafka::{authorization_header, reply_reader};

pub async fn run(mut cfg: Config) -> anyhow::Result<()> {
    let _cluster = if broker_answers(&cfg) {
        println!("Using the Kafka broker at {}.", cfg.kafka_bootstrap_servers);
        None
    } else {
        let cluster = MockCluster::new(1).context("could not start the embedded broker")?;
        for topic in [&cfg.command_topic, &cfg.reply_topic, &cfg.dlq_topic] {
            cluster.create_topic(topic, cfg.topic_partitions, 1)?;
        }
        cfg.kafka_bootstrap_servers = cluster.bootstrap_servers();
        println!(
            "No Kafka broker answers at the configured address; started an embedded Kafka-protocol \
             broker (librdkafka's mock cluster, for demonstration only) at {}.\n\
             Production points KAFKA_BOOTSTRAP_SERVERS at a real Kafka.",
            cfg.kafka_bootstrap_servers
        );
        Some(cluster)
    };
    cfg.log();
    let bound = cfg.shutdown_timeout;
    let app = Application::build(cfg.clone()).await?;
    println!(
        "Processor running: metrics and health at http://{}/metrics, /healthz, /readyz",
        app.http_addr()
    );

    let replies = reply_reader(&cfg, "demo")?;
    let token = tokens::create_token(
        app.pool(),
        &format!("demo-{}", Uuid::new_v4().simple()),
        Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        true,
    )
    .await?;
    let authorization = authorization_header(&token);
    let producer: FutureProducer = kafka::client_config(&cfg).create()?;
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let event = Uuid::new_v4();
    let id = |n: u32| format!("demo-{run}-{n}");
    let commands: Vec<(&str, String)> = vec![
        ("create (PUT creates)", json!({"request_id": id(1), "event_uuid": event, "expected_version": 0,
            "body": {"action": "login", "app": "authentik.core", "user": {"pk": 1, "username": "akadmin"},
                     "client_ip": "2001:0DB8::0001", "context": {"mfa": true}}}).to_string()),
        ("update, fields left out are kept", json!({"request_id": id(2), "event_uuid": event.simple().to_string(), "expected_version": 1,
            "body": {"action": "logout", "app": "  authentik.flows  ", "expires": "2027-01-01T12:00:00+02:00"}}).to_string()),
        ("invalid body", json!({"request_id": id(3), "event_uuid": event,
            "body": {"action": "LOGIN", "app": " ", "client_ip": "999.1.1.1", "expires": "tomorrow", "user": null}}).to_string()),
        ("stale expected_version", json!({"request_id": id(4), "event_uuid": event, "expected_version": 1,
            "body": {"action": "login", "app": "x"}}).to_string()),
        ("not a UUID", json!({"request_id": id(5), "event_uuid": "not-a-uuid", "body": {}}).to_string()),
        ("redelivery of the update", json!({"request_id": id(2), "event_uuid": event.simple().to_string(), "expected_version": 1,
            "body": {"action": "logout", "app": "  authentik.flows  ", "expires": "2027-01-01T12:00:00+02:00"}}).to_string()),
        ("request_id reused for another command", json!({"request_id": id(2), "event_uuid": event,
            "body": {"action": "login", "app": "other"}}).to_string()),
        ("not JSON", format!("{{\"request_id\": \"{}\", oops", id(8))),
    ];
    for (n, (what, value)) in (1..).zip(&commands) {
        // The request-id header names a command whose value cannot be read (the last one).
        let header = id(n);
        producer
            .send(
                FutureRecord::to(&cfg.command_topic)
                    .key(event.to_string().as_bytes())
                    .payload(value.as_bytes())
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: header::REQUEST_ID,
                                value: Some(header.as_bytes()),
                            })
                            .insert(Header {
                                key: header::AUTHORIZATION,
                                value: Some(authorization.as_bytes()),
                            }),
                    ),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)?;
        println!("\n-> {what}\n   {value}");
        let m = tokio::time::timeout(Duration::from_secs(30), replies.recv())
            .await
            .context("no reply within 30 s")??;
        println!(
            "<- {}",
            String::from_utf8_lossy(m.payload().unwrap_or_default())
        );
    }
    println!("\nThe event's history: event-updater show {event}\nServing; Ctrl-C to stop.");
    Ok(app.run_until_signal(bound).await?)
}

/// True when a broker answers a metadata request within 3 seconds.
fn broker_answers(cfg: &Config) -> bool {
    let consumer: Result<BaseConsumer, _> =
        kafka::client_config(cfg).set("log_level", "0").create();
    consumer.is_ok_and(|c| {
        c.fetch_metadata(None, Timeout::After(Duration::from_secs(3)))
            .is_ok()
    })
}
