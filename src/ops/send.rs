//! `event-updater send`: one command in, its reply out (exit code 0 for 2xx, 1 otherwise).
//!
//! It takes as its reply only a record that names the request id and the very command record
//! it published ([`judge_reply`]), so a reply that merely claims its request id (anyone may send
//! a record with that `request-id` header) is reported and ignored.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser;
use clap::Args;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::domain::auth::{self, Credentials};
use event_updater::domain::reply::{header, scope_tag};
use event_updater::drf::validate;
use event_updater::pipeline::kafka;

use super::kafka::{authorization_header, headers_of, last_header, reply_reader, HeaderPair};

/// `event-updater send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The command as a JSON file (`-`: standard input), published as it is.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["event_uuid", "expected_version", "body"], required_unless_present = "event_uuid")]
    pub file: Option<String>,
    /// The event to update (with --body).
    #[arg(long, requires = "body")]
    pub event_uuid: Option<String>,
    /// The command's request_id (default: a random UUID; with --file, used when the file has
    /// no usable request_id).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Apply only if the event is at this version (0: must not exist yet).
    #[arg(long)]
    pub expected_version: Option<i64>,
    /// The PUT body, as JSON.
    #[arg(long, value_name = "JSON")]
    pub body: Option<String>,
    /// The API token, sent as `authorization: Bearer <token>` (a value with a space in it is
    /// sent as the whole header).
    #[arg(long, env = "EVENT_UPDATER_TOKEN", hide_env_values = true)]
    pub authorization: Option<String>,
    /// The `correlation-id` header, echoed on the reply (default: a random UUID).
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// How long to wait for the reply.
    #[arg(long = "timeout-secs", value_name = "TIMEOUT_SECS", default_value = "30", value_parser = clap::value_parser!(u64).map(Duration::from_secs))]
    pub timeout: Duration,
}

/// A command ready to publish.
#[derive(Debug)]
struct Outbound {
    key: Option<String>,
    value: Vec<u8>,
    request_id: String,
    /// Whether the processor will file the reply under `request_id` (else match by
    /// correlation id).
    request_id_usable: bool,
}

/// Publishes one command, waits for its reply, prints it; fails (exit code 1) unless the
/// status is 2xx.
pub async fn run(cfg: &Config, args: SendArgs) -> anyhow::Result<()> {
    let command = outbound(&args)?;
    let correlation_id = args
        .correlation_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    // Positioned at the ends read now, before sending, so the reply cannot be missed.
    let replies = reply_reader(cfg, "send")?;
    let authorization = args.authorization.as_deref().map(authorization_header);
    let placed = publish_command(cfg, &command, &correlation_id, authorization.as_deref()).await?;
    let expected = Expected {
        request_id: command.request_id.clone(),
        correlation_id: (!command.request_id_usable).then(|| correlation_id.clone()),
        topic: cfg.command_topic.clone(),
        partition: placed.partition,
        offset: placed.offset,
        scope: match auth::credentials(authorization.as_deref().map(str::as_bytes)) {
            Credentials::Bearer(hash) => Some(scope_tag(&hash)),
            _ => None,
        },
    };
    let timeout = args.timeout;
    let reply = tokio::time::timeout(timeout, wait_for_reply(&replies, &expected))
        .await
        .with_context(|| {
            format!(
                "no reply to request {:?} within {timeout:?}",
                command.request_id
            )
        })??;
    println!("{}", String::from_utf8_lossy(&reply));
    let status = serde_json::from_slice::<Value>(&reply)
        .ok()
        .and_then(|v| v["status"].as_u64());
    match status {
        Some(s) if (200..300).contains(&s) => Ok(()),
        Some(s) => bail!("the command was answered with status {s}"),
        None => bail!("the reply has no status"),
    }
}

/// The command from `--file` (as it is) or from the flags.
fn outbound(args: &SendArgs) -> anyhow::Result<Outbound> {
    let fallback_id = || {
        args.request_id
            .clone()
            .unwrap_or_else(|| Uuid::new_v4().to_string())
    };
    let (value, parsed) = match &args.file {
        Some(path) => {
            let bytes = read_input(path)?;
            let parsed = serde_json::from_slice::<Value>(&bytes).ok();
            if parsed.is_none() {
                eprintln!("{path} is not JSON; sending it as it is.");
            }
            (bytes, parsed.unwrap_or(Value::Null))
        }
        None => {
            let body = args.body.as_deref().unwrap_or("{}");
            let body: Value = serde_json::from_str(body).context("--body is not JSON")?;
            let mut v =
                json!({"request_id": fallback_id(), "event_uuid": args.event_uuid, "body": body});
            if let Some(n) = args.expected_version {
                v["expected_version"] = json!(n);
            }
            (v.to_string().into_bytes(), v)
        }
    };
    let request_id = match parsed.get("request_id") {
        Some(id) if validate::validate_request_id(id).is_ok() => {
            id.as_str().unwrap_or_default().to_string()
        }
        _ => fallback_id(),
    };
    let key = parsed.get("event_uuid").and_then(|u| {
        validate::parse_event_uuid(u)
            .map(|u| u.to_string())
            .or_else(|| u.as_str().map(str::to_string))
    });
    Ok(Outbound {
        key,
        value,
        request_id_usable: validate::validate_request_id(&json!(request_id)).is_ok(),
        request_id,
    })
}

fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the command from standard input")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    }
    Ok(bytes)
}

/// Publishes the command; its partition and offset as the broker acknowledged them.
async fn publish_command(
    cfg: &Config,
    command: &Outbound,
    correlation_id: &str,
    authorization: Option<&str>,
) -> anyhow::Result<rdkafka::producer::future_producer::Delivery> {
    let producer = kafka::producer(cfg)?;
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::REQUEST_ID,
            value: Some(command.request_id.as_bytes()),
        })
        .insert(Header {
            key: header::CORRELATION_ID,
            value: Some(correlation_id.as_bytes()),
        });
    if let Some(a) = authorization {
        headers = headers.insert(Header {
            key: header::AUTHORIZATION,
            value: Some(a.as_bytes()),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&cfg.command_topic)
        .payload(command.value.as_slice())
        .headers(headers);
    if let Some(k) = &command.key {
        record = record.key(k.as_str());
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing to {}", cfg.command_topic))
}

/// What the reply to the command `send` published must name.
#[derive(Debug)]
struct Expected {
    request_id: String,
    /// Where the request id is not one the processor can file the reply under: the
    /// `correlation-id` that stands for it.
    correlation_id: Option<String>,
    /// The command record, as its delivery report placed it.
    topic: String,
    partition: i32,
    offset: i64,
    /// The scope tag of the token sent, if any.
    scope: Option<String>,
}

/// What a record on the reply topic is to the command `send` published.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// Its reply: the request id (or correlation id) and the command record match.
    Ours,
    /// It claims the request id but answers another record (or names none, or another
    /// credential): a spoofed reply, or another sender's command under the same request id.
    Spoofed(String),
    /// Someone else's reply.
    Other,
}

/// Judges a reply record by its headers (see [`Judged`]).
fn judge_reply(headers: &[HeaderPair], expected: &Expected) -> Judged {
    let get = |name: &str| last_header(headers, name).map(String::from_utf8_lossy);
    let claims = match &expected.correlation_id {
        None => get(header::REQUEST_ID).as_deref() == Some(expected.request_id.as_str()),
        Some(c) => get(header::CORRELATION_ID).as_deref() == Some(c.as_str()),
    };
    if !claims {
        return Judged::Other;
    }
    let answers = (
        get(header::COMMAND_TOPIC),
        get(header::COMMAND_PARTITION),
        get(header::COMMAND_OFFSET),
    );
    let (Some(topic), Some(partition), Some(offset)) = answers else {
        return Judged::Spoofed("it names no command record".into());
    };
    if topic != expected.topic
        || partition != expected.partition.to_string()
        || offset != expected.offset.to_string()
    {
        return Judged::Spoofed(format!("it answers {topic}/{partition}/{offset}"));
    }
    match (get(header::COMMAND_SCOPE), &expected.scope) {
        (Some(got), Some(want)) if got != want.as_str() => {
            Judged::Spoofed(format!("it names another credential's scope ({got})"))
        }
        _ => Judged::Ours,
    }
}

/// The first reply to the command `expected` describes; replies that only claim its request id
/// are reported on stderr and ignored.
async fn wait_for_reply(replies: &StreamConsumer, expected: &Expected) -> anyhow::Result<Vec<u8>> {
    loop {
        let m = replies.recv().await.context("reading the reply topic")?;
        match judge_reply(&headers_of(&m), expected) {
            Judged::Ours => return Ok(m.payload().unwrap_or_default().to_vec()),
            Judged::Spoofed(why) => eprintln!(
                "Ignoring a spoofed reply (at {}/{}) under request id {:?}: {why}, not this \
                    command ({}/{}/{}).",
                m.partition(),
                m.offset(),
                expected.request_id,
                expected.topic,
                expected.partition,
                expected.offset
            ),
            Judged::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> (String, Option<Vec<u8>>) {
        (k.into(), Some(v.as_bytes().to_vec()))
    }

    fn expected() -> Expected {
        Expected {
            request_id: "r1".into(),
            correlation_id: None,
            topic: "cmds".into(),
            partition: 2,
            offset: 41,
            scope: Some(scope_tag(&auth::hash("t"))),
        }
    }

    fn reply_headers(
        request_id: &str,
        partition: &str,
        offset: &str,
    ) -> Vec<(String, Option<Vec<u8>>)> {
        vec![
            h(header::REQUEST_ID, request_id),
            h(header::COMMAND_TOPIC, "cmds"),
            h(header::COMMAND_PARTITION, partition),
            h(header::COMMAND_OFFSET, offset),
        ]
    }

    #[test]
    fn send_takes_only_the_reply_to_its_own_record() {
        let e = expected();
        assert_eq!(
            judge_reply(&reply_headers("r1", "2", "41"), &e),
            Judged::Ours
        );
        let mut scoped = reply_headers("r1", "2", "41");
        scoped.push(h(header::COMMAND_SCOPE, &scope_tag(&auth::hash("t"))));
        assert_eq!(judge_reply(&scoped, &e), Judged::Ours);
        assert_eq!(
            judge_reply(&reply_headers("r2", "2", "41"), &e),
            Judged::Other
        );
        assert!(matches!(
            judge_reply(&reply_headers("r1", "2", "42"), &e),
            Judged::Spoofed(why) if why.contains("cmds/2/42")
        ));
        assert!(matches!(
            judge_reply(&reply_headers("r1", "0", "41"), &e),
            Judged::Spoofed(_)
        ));
        assert!(matches!(
            judge_reply(&[h(header::REQUEST_ID, "r1")], &e),
            Judged::Spoofed(why) if why.contains("no command record")
        ));
        let mut other_scope = reply_headers("r1", "2", "41");
        other_scope.push(h(header::COMMAND_SCOPE, &scope_tag(&auth::hash("u"))));
        assert!(matches!(judge_reply(&other_scope, &e), Judged::Spoofed(_)));
        // Matched by correlation id where the request id is unusable.
        let by_correlation = Expected {
            correlation_id: Some("c1".into()),
            ..expected()
        };
        let mut headers = reply_headers("fallback", "2", "41");
        headers.push(h(header::CORRELATION_ID, "c1"));
        assert_eq!(judge_reply(&headers, &by_correlation), Judged::Ours);
    }

    fn args() -> SendArgs {
        SendArgs {
            file: None,
            event_uuid: Some("3FA85F64571745 62B3FC2C963F66AFA6".replace(' ', "")),
            request_id: Some("r1".into()),
            expected_version: Some(0),
            body: Some(r#"{"action": "login", "app": "a", "z": 1.0}"#.into()),
            authorization: None,
            correlation_id: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_command_from_flags_is_keyed_by_the_canonical_uuid() {
        let c = outbound(&args()).unwrap();
        assert_eq!(c.request_id, "r1");
        assert!(c.request_id_usable);
        assert_eq!(
            c.key.as_deref(),
            Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        );
        assert_eq!(
            String::from_utf8(c.value).unwrap(),
            r#"{"request_id":"r1","event_uuid":"3FA85F6457174562B3FC2C963F66AFA6","body":{"action":"login","app":"a","z":1.0},"expected_version":0}"#
        );
        let c = outbound(&SendArgs {
            request_id: Some(String::new()),
            ..args()
        })
        .unwrap();
        assert!(!c.request_id_usable);
    }
}
