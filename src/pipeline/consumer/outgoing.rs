//! The records a batch publishes: a reply per command, and dead letters.

use std::sync::Arc;

use crate::config::Config;
use crate::domain::decide::{Outcome, OutcomeKind};
use crate::domain::reply::{Destination, Outgoing, MAX_ECHOED_BYTES};
use crate::metrics;
use crate::pipeline::trace;

use super::processor::Fetched;

/// The records a batch publishes: one reply per command, plus a dead letter for each record
/// that could not be decoded, the first time it is handled. A `reply-to` header is honoured
/// when the allow-list names its topic.
pub(super) fn outgoing(
    cfg: &Config,
    batch: &[Fetched],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(batch.len());
    for ((f, o), t) in batch.iter().zip(outcomes).zip(traces) {
        let (m, c) = (&f.incoming, &f.command);
        let mut headers = vec![("request-id".to_string(), c.request_id.clone().into_bytes())];
        if let Some(v) = m
            .header("correlation-id")
            .filter(|v| v.len() <= MAX_ECHOED_BYTES)
        {
            headers.push(("correlation-id".to_string(), v.to_vec()));
        }
        if let Some(t) = t {
            headers.push(("traceparent".to_string(), t.header.clone().into_bytes()));
        }
        // A 403 goes to the default reply topic only: whoever may write commands must not be
        // able to place a reply (with any request id) on a topic that others read.
        let reply_to = match o.kind {
            OutcomeKind::Forbidden => None,
            _ => m.header("reply-to"),
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
            // The command's own headers travel along, except its credentials.
            let mut headers: Vec<(String, Vec<u8>)> = m
                .headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            headers.push(("dlq-reason".into(), reason.clone().into_bytes()));
            headers.push(("dlq-status".into(), o.status.to_string().into_bytes()));
            headers.push(("dlq-source-topic".into(), m.topic.clone().into_bytes()));
            headers.push((
                "dlq-source-partition".into(),
                m.partition.to_string().into_bytes(),
            ));
            headers.push((
                "dlq-source-offset".into(),
                m.offset.to_string().into_bytes(),
            ));
            headers.push(("request-id".into(), c.request_id.clone().into_bytes()));
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
