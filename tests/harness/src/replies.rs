//! Reading what the processor publishes: a consumer assigned every partition of a topic from
//! its beginning (no group, so no wait for a rebalance), and a [`Collector`] that reads it in
//! the background and keeps each record under its request id, with the moment it was read
//! and its CreateTime.
//!
//! A reply's request id is its `request-id` header, which the contract puts on every reply;
//! where a record has none (a reply of an older processor), the value's `request_id`. The
//! benchmark's broker echo copies a command's headers, so its records are keyed the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Error, Result};

/// The header that carries a command's request id onto its reply: the library's
/// `event_updater::domain::reply::header::REQUEST_ID`, named here because this crate does not
/// import the library (`tests/it` checks that the two agree).
pub const REQUEST_ID_HEADER: &str = "request-id";

/// A consumer of partitions `0..partitions` of `topic` from the beginning, outside any group
/// (`group.id` only names it), taking each record as soon as the broker has it.
pub fn reader(
    mut client: ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The request id of a record: its `request-id` header, else its value's `request_id`, else
/// the empty string.
pub fn request_id(m: &BorrowedMessage<'_>) -> String {
    let header = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == REQUEST_ID_HEADER)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    header.unwrap_or_else(|| {
        serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v["request_id"].as_str().map(str::to_string))
            .unwrap_or_default()
    })
}

/// One record as the collector read it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its value.
    pub value: Vec<u8>,
    /// When the collector had it from the consumer.
    pub read_at: Instant,
    /// Its timestamp (the producer's CreateTime), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The partition it was read from.
    pub partition: i32,
}

/// Everything read, by request id, in the order read.
pub type Replies = HashMap<String, Vec<Reply>>;

#[derive(Debug, Default)]
struct State {
    by_id: Replies,
    records: u64,
    last_read: Option<Instant>,
}

/// Reads a topic in the background and keeps every record under its request id.
#[derive(Debug)]
pub struct Collector {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts reading with `consumer` (see [`reader`]) on a task of the current runtime.
    pub fn start(consumer: StreamConsumer) -> Collector {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let read_at = Instant::now();
                        let id = request_id(&m);
                        let reply = Reply {
                            value: m.payload().unwrap_or_default().to_vec(),
                            read_at,
                            timestamp_ms: m.timestamp().to_millis(),
                            partition: m.partition(),
                        };
                        let mut st = lock(&s);
                        st.records += 1;
                        st.last_read = Some(read_at);
                        st.by_id.entry(id).or_default().push(reply);
                    }
                    // A transient consumer error (the broker restarting, say): read on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Collector { state, task }
    }

    /// How many distinct request ids have a reply.
    pub fn answered(&self) -> usize {
        lock(&self.state).by_id.len()
    }

    /// How many records were read in all (a duplicate counts twice).
    pub fn records(&self) -> u64 {
        lock(&self.state).records
    }

    /// When the last record was read.
    pub fn last_read(&self) -> Option<Instant> {
        lock(&self.state).last_read
    }

    /// The replies read so far for `id`.
    pub fn get(&self, id: &str) -> Option<Vec<Reply>> {
        lock(&self.state).by_id.get(id).cloned()
    }

    /// Waits until at least `n` request ids have a reply; fails after `bound`.
    pub async fn wait_for_count(&self, n: usize, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            let answered = self.answered();
            if answered >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unanswered {
                    missing: n - answered,
                    of: n,
                    after: bound,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every id in `ids` has a reply; fails after `bound` with how many have none.
    pub async fn wait_for_all(&self, ids: &[String], bound: Duration) -> Result<()> {
        let missing = self.wait_for_all_or_missing(ids, bound).await;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Unanswered {
                missing: missing.len(),
                of: ids.len(),
                after: bound,
            })
        }
    }

    /// Waits until every id in `ids` has a reply, or `bound` passes; the ids still without
    /// one (empty: all answered).
    pub async fn wait_for_all_or_missing(&self, ids: &[String], bound: Duration) -> Vec<String> {
        self.wait_while_arriving(ids, bound, bound).await
    }

    /// As [`Collector::wait_for_all_or_missing`], but also gives up once nothing at all has
    /// been read for `idle`: a processor that has stopped answering is not waited for.
    pub async fn wait_while_arriving(
        &self,
        ids: &[String],
        bound: Duration,
        idle: Duration,
    ) -> Vec<String> {
        let started = Instant::now();
        let deadline = started + bound;
        // Ids before `from` are known to be answered: each poll starts at the first missing.
        let mut from = 0;
        loop {
            {
                let st = lock(&self.state);
                while from < ids.len() && st.by_id.contains_key(&ids[from]) {
                    from += 1;
                }
                let now = Instant::now();
                let since = st.last_read.map_or(started, |t| t.max(started));
                let quiet = now.duration_since(since) >= idle;
                if from == ids.len() || now >= deadline || quiet {
                    return ids[from..]
                        .iter()
                        .filter(|id| !st.by_id.contains_key(*id))
                        .cloned()
                        .collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing has been read for `idle` (late duplicates, say, have arrived).
    pub async fn settle(&self, idle: Duration) {
        let started = Instant::now();
        loop {
            let since = self.last_read().map_or(started, |t| t.max(started));
            let quiet_for = since.elapsed();
            if quiet_for >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet_for).await;
        }
    }

    /// When each request id read so far was first answered: the (partition, CreateTime in ms)
    /// of its earliest reply. A redelivered command's later replies are left out; so are
    /// replies without a timestamp.
    pub fn answered_at(&self) -> HashMap<String, (i32, i64)> {
        lock(&self.state)
            .by_id
            .iter()
            .filter_map(|(id, copies)| {
                copies
                    .iter()
                    .filter_map(|r| r.timestamp_ms.map(|t| (r.partition, t)))
                    .min_by_key(|(_, t)| *t)
                    .map(|first| (id.clone(), first))
            })
            .collect()
    }

    /// Takes what was read so far, leaving the collector empty (it reads on).
    pub fn take(&self) -> Replies {
        std::mem::take(&mut lock(&self.state).by_id)
    }

    /// Stops reading (the consumer is dropped) and returns what was read.
    pub async fn stop(mut self) -> Replies {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.take()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The reading task holds the lock only to insert; a panic there cannot leave it half done.
    state.lock().unwrap_or_else(|e| e.into_inner())
}
