//! A record on its way to the broker: built from an [`Outgoing`], and handed to a producer
//! without waiting for its acknowledgement.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientContext;

use crate::domain::reply::Outgoing;

/// `r` (its key, value and headers) as a record to `topic`.
pub fn future_record<'a>(topic: &'a str, r: &'a Outgoing) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .payload(r.value.as_slice())
        .headers(headers);
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    record
}

/// Hands `record` to `producer` without waiting for its acknowledgement; waits only while the
/// producer's queue is full.
pub async fn enqueue_waiting<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
