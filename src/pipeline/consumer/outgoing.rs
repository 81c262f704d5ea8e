//! The records a batch publishes: a reply per command, and dead letters.

use std::sync::Arc;

use crate::config::Config;
use crate::domain::decide::{Outcome, OutcomeKind};
use crate::domain::reply::{
    copied_to_dead_letter, header, scope_tag, DeadLetterKind, Destination, Outgoing,
    MAX_ECHOED_BYTES,
};
use crate::metrics;
use crate::pipeline::trace;

use super::parts::Fetched;

/// The records a batch publishes: one reply per command, plus a dead letter for each record
/// that could not be decoded, the first time it is handled. A `reply-to` header is honoured
/// when the allow-list names its topic.
///
/// Every reply names the record it answers (`command-topic`, `command-partition`,
/// `command-offset`) and, where the command was authenticated, its credential's scope tag
/// (`command-scope`): a request id alone is anyone's to claim (a record without credentials
/// gets its 403 under its `request-id` header), these are not. They are set per delivery, so a
/// redelivered or replayed command's stored reply names the record it now answers.
///
/// A dead letter is marked `dlq-kind: command` (only such dead letters are ever replayed as
/// commands) and carries only the command headers of
/// [`DEAD_LETTER_COPIED_HEADERS`](crate::domain::reply::DEAD_LETTER_COPIED_HEADERS), never its
/// credentials or a `dlq-*` header the producer wrote.
pub(super) fn outgoing(
    cfg: &Config,
    batch: &[Fetched],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(batch.len());
    for ((f, o), t) in batch.iter().zip(outcomes).zip(traces) {
        let (m, c) = (&f.incoming, &f.command);
        let mut headers = vec![
            (
                header::REQUEST_ID.to_string(),
                c.request_id.clone().into_bytes(),
            ),
            (
                header::COMMAND_TOPIC.to_string(),
                m.topic.clone().into_bytes(),
            ),
            (
                header::COMMAND_PARTITION.to_string(),
                m.partition.to_string().into_bytes(),
            ),
            (
                header::COMMAND_OFFSET.to_string(),
                m.offset.to_string().into_bytes(),
            ),
        ];
        // A 403's credential did not authenticate: it names no scope.
        if let Some(scope) = c
            .scope(cfg.auth_mode)
            .filter(|s| !s.is_empty() && o.kind != OutcomeKind::Forbidden)
        {
            headers.push((
                header::COMMAND_SCOPE.to_string(),
                scope_tag(scope).into_bytes(),
            ));
        }
        if let Some(v) = m
            .header(header::CORRELATION_ID)
            .filter(|v| v.len() <= MAX_ECHOED_BYTES)
        {
            headers.push((header::CORRELATION_ID.to_string(), v.to_vec()));
        }
        if let Some(t) = t {
            headers.push((
                header::TRACEPARENT.to_string(),
                t.header.clone().into_bytes(),
            ));
        }
        // A 403 goes to the default reply topic only: whoever may write commands must not be
        // able to place a reply (with any request id) on a topic that others read.
        let reply_to = match o.kind {
            OutcomeKind::Forbidden => None,
            _ => m.header(header::REPLY_TO),
        };
        let topic = reply_to.and_then(|t| {
            let t = std::str::from_utf8(t).ok()?;
            if cfg.reply_to_allowed(t) {
                Some(t.to_string())
            } else {
                metrics::record_reply_to_refused();
                None
            }
        });
        out.push(Outgoing {
            destination: Destination::Reply,
            topic,
            key: c.reply_key.clone(),
            value: o.reply.clone(),
            headers,
        });
        if let (Some(reason), OutcomeKind::New) =
            (c.dead_letter.as_ref().or(o.dead_letter.as_ref()), o.kind)
        {
            let mut headers: Vec<(String, Vec<u8>)> = m
                .headers
                .iter()
                .filter(|(k, _)| copied_to_dead_letter(k))
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            headers.extend([
                (
                    header::DLQ_KIND.to_string(),
                    DeadLetterKind::Command.as_str().as_bytes().to_vec(),
                ),
                (header::DLQ_REASON.to_string(), reason.clone().into_bytes()),
                (
                    header::DLQ_STATUS.to_string(),
                    o.status.to_string().into_bytes(),
                ),
                (
                    header::DLQ_SOURCE_TOPIC.to_string(),
                    m.topic.clone().into_bytes(),
                ),
                (
                    header::DLQ_SOURCE_PARTITION.to_string(),
                    m.partition.to_string().into_bytes(),
                ),
                (
                    header::DLQ_SOURCE_OFFSET.to_string(),
                    m.offset.to_string().into_bytes(),
                ),
                (
                    header::REQUEST_ID.to_string(),
                    c.request_id.clone().into_bytes(),
                ),
            ]);
            out.push(Outgoing {
                destination: Destination::DeadLetter,
                topic: None,
                key: m.key.clone(),
                value: Arc::new(m.payload.clone().unwrap_or_default()),
                headers,
            });
        }
    }
    out
}
