//! A record the broker refuses for good (too large for its topic): a reply becomes a dead letter
//! and a short error reply that still answers its command.

use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::reply::{
    header, DeadLetterKind, Destination, Outgoing, Reply, REPLY_REFUSED_REASON,
};

/// For a reply the broker refuses for good (too large for the topic): the reply itself as a dead
/// letter, and a short reply with status 500 that says what happened and what the command's
/// outcome was (`reply_status`, `reply_version`), so that the command is still answered.
///
/// The dead letter is marked `dlq-kind: reply`: its value is a reply (the whole event, keyed by
/// its UUID), which `dlq replay` must never publish as a command. It keeps the reply's headers
/// (the request id and the command's coordinates), never a `dlq-source-*` header, which marks
/// a command's dead letter.
pub(super) fn refused_reply(record: Outgoing, e: &KafkaError) -> (Outgoing, Outgoing) {
    let original: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
    let reason = format!("{REPLY_REFUSED_REASON}: {e}");
    let answer = Reply {
        request_id: original["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        event_uuid: original["event_uuid"]
            .as_str()
            .and_then(|u| u.parse::<Uuid>().ok()),
        status: 500,
        version: None,
        body: json!({
            "detail": format!(
                "The reply to this command ({} bytes) was refused by the broker ({e}); it is on \
                the dead-letter topic.",
                record.value.len()
            ),
            "reply_status": original["status"],
            "reply_version": original["version"],
        }),
    };
    let mut answer_headers = record.headers.clone();
    answer_headers.push((header::REPLY_REFUSED.into(), reason.clone().into_bytes()));
    let answer = Outgoing {
        destination: Destination::Reply,
        topic: record.topic.clone(),
        key: record.key.clone(),
        value: Arc::new(answer.to_bytes()),
        headers: answer_headers,
    };
    let mut headers = record.headers;
    headers.push((
        header::DLQ_KIND.into(),
        DeadLetterKind::Reply.as_str().as_bytes().to_vec(),
    ));
    headers.push((header::DLQ_REASON.into(), reason.into_bytes()));
    headers.push((
        header::DLQ_STATUS.into(),
        original["status"].to_string().into_bytes(),
    ));
    let dead = Outgoing {
        destination: Destination::DeadLetter,
        topic: None,
        key: record.key,
        value: record.value,
        headers,
    };
    (dead, answer)
}

/// Whether the broker will never take the record (too large for it, or malformed).
pub(super) fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}
