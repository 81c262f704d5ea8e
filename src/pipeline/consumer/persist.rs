//! Applying a batch in PostgreSQL, with retries for an unavailable database and concurrent
//! writers, and the isolation of a command the database refuses or that keeps conflicting.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;

use tokio::sync::watch;

use crate::domain::command::{Action, Command};
use crate::domain::decide::{unstored, Outcome, OutcomeKind, Source};
use crate::domain::reply::detail;
use crate::metrics;
use crate::store::{self, StoreError};

use super::processor::{Fetched, Shared};

/// Most attempts at one batch, and then at each of its commands alone, while concurrent writers
/// keep conflicting with it (see `persist_retrying`).
pub const CONFLICT_ATTEMPTS: u32 = 8;
/// The first wait after a conflict; it doubles with each further conflict, up to
/// [`CONFLICT_BACKOFF_MAX`], and is jittered.
pub(super) const CONFLICT_BACKOFF: Duration = Duration::from_millis(10);
pub(super) const CONFLICT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The `detail` of the 409 a command gets when concurrent writers kept changing its event for
/// [`CONFLICT_ATTEMPTS`] attempts: it was not applied, and its request id keeps this answer.
pub const KEPT_CONFLICTING: &str = "Concurrent writers kept changing this event while the command was being applied; it was not applied. Send it again with a new request_id.";

/// Applies the batch, retrying while the database is unavailable or a concurrent writer
/// conflicts; if the database refuses the data, or the batch still conflicts after
/// [`CONFLICT_ATTEMPTS`], applies the commands one by one so that only the offending command is
/// answered with an error (400 for refused data, 409 [`KEPT_CONFLICTING`] for a command that
/// keeps conflicting), and the others are applied. `None`: shutdown came first.
pub(super) async fn persist_batch(
    shared: &Shared,
    batch: &[Fetched],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<Outcome>> {
    let mut commands: Vec<(Command, Source)> = batch
        .iter()
        .map(|f| {
            let s = Source {
                topic: f.incoming.topic.clone(),
                partition: f.incoming.partition,
                offset: f.incoming.offset,
            };
            (f.command.clone(), s)
        })
        .collect();
    match persist_retrying(shared, &commands, shutdown).await? {
        Ok(o) => Some(o),
        Err(e) if commands.len() == 1 => {
            let c = commands.pop()?;
            answer_unapplied(shared, c, &e, shutdown)
                .await
                .map(|o| vec![o])
        }
        Err(e) => {
            if matches!(e, StoreError::Conflict(_)) {
                metrics::record_kept_conflicting("batch");
            }
            tracing::warn!(error = %e, size = commands.len(), "batch not applied; applying its commands one by one");
            let mut out = Vec::with_capacity(commands.len());
            for c in commands {
                out.push(persist_alone(shared, c, shutdown).await?);
            }
            Some(out)
        }
    }
}

/// Applies one command; if it is refused or keeps conflicting, answers it with an error
/// ([`answer_unapplied`]).
pub(super) async fn persist_alone(
    shared: &Shared,
    (cmd, source): (Command, Source),
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let single = [(cmd, source)];
    let e = match persist_retrying(shared, &single, shutdown).await? {
        Ok(mut o) => return o.pop(),
        Err(e) => e,
    };
    let [c] = single;
    answer_unapplied(shared, c, &e, shutdown).await
}

/// Answers a command that could not be applied, without applying it: a 400 when the database
/// refused its data, a 409 ([`KEPT_CONFLICTING`]) when it still conflicted after
/// [`CONFLICT_ATTEMPTS`]. The answer is stored with its request id like any other (it writes no
/// event row, so no concurrent writer of the event can conflict with it), so a redelivery gets
/// the same bytes and never a late apply; only if even that cannot be stored is it answered
/// unstored.
pub(super) async fn answer_unapplied(
    shared: &Shared,
    (cmd, source): (Command, Source),
    e: &StoreError,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let (status, text) = match e {
        StoreError::Conflict(_) => {
            metrics::record_kept_conflicting("command");
            tracing::warn!(request_id = %cmd.request_id, error = %e, attempts = CONFLICT_ATTEMPTS, "the event kept changing under concurrent writers; the command is not applied and answered 409");
            (409, KEPT_CONFLICTING.to_string())
        }
        _ => {
            tracing::warn!(request_id = %cmd.request_id, error = %e, "the database refused a command; answering 400");
            (400, refusal_text(e))
        }
    };
    let event_uuid = cmd.action.event_uuid();
    let rejected = Command {
        action: Action::Reject {
            event_uuid,
            status,
            body: detail(text.clone()),
        },
        ..cmd
    };
    let single = [(rejected, source)];
    match persist_retrying(shared, &single, shutdown).await? {
        Ok(mut o) => o.pop(),
        Err(e) => {
            // Even the answer cannot be stored: answer without storing it.
            tracing::error!(error = %e, status, "could not store an error reply");
            let [(cmd, _)] = single;
            Some(unstored(&cmd, status, detail(text), OutcomeKind::New))
        }
    }
}

/// Applies `commands` as one batch, retrying what can pass:
/// - a database that is unavailable: for as long as it takes, with back-off (50 ms doubling to
///   5 s), until shutdown;
/// - a concurrent writer (a tripped fence that also conflicted on the locking path): at most
///   [`CONFLICT_ATTEMPTS`] attempts in all, waiting [`conflict_backoff`] between them; then the
///   conflict is returned, so that a command that keeps conflicting cannot stall its partition.
///
/// `None`: shutdown while waiting; `Some(Err)`: refused data, or a conflict after the bound
/// (never an unavailable database).
pub(super) async fn persist_retrying(
    shared: &Shared,
    commands: &[(Command, Source)],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<Vec<Outcome>, StoreError>> {
    let mut backoff = Duration::from_millis(50);
    let mut conflicts = 0;
    loop {
        let started = Instant::now();
        let wait = match store::apply_batch(&shared.pool, commands, shared.cfg.rules(), Utc::now())
            .await
        {
            Ok(o) => {
                metrics::record_batch(commands.len(), started.elapsed());
                shared.health.database_ok.store(true, Ordering::Relaxed);
                return Some(Ok(o));
            }
            Err(e @ StoreError::Conflict(_)) => {
                metrics::record_db_error("conflict");
                shared.health.database_ok.store(true, Ordering::Relaxed);
                conflicts += 1;
                if conflicts >= CONFLICT_ATTEMPTS {
                    return Some(Err(e));
                }
                let wait = conflict_backoff(conflicts);
                tracing::debug!(error = %e, attempt = conflicts, retry_in = ?wait, "concurrent writer; retrying the batch");
                wait
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Url(_) | StoreError::Migrate(_))) => {
                metrics::record_db_error("unavailable");
                shared.health.database_ok.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; retrying the batch");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                b
            }
            Err(e) => {
                metrics::record_db_error("refused");
                return Some(Err(e));
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // Shutdown while the database is away: leave the batch uncommitted; it is
            // redelivered after the restart.
            _ = shutdown.wait_for(|s| *s) => return None,
        }
    }
}

/// The wait after the `n`th conflict in a row (n >= 1): [`CONFLICT_BACKOFF`] doubled `n - 1`
/// times, at most [`CONFLICT_BACKOFF_MAX`], of which a random half is taken off ("equal
/// jitter"), so that writers that collided do not retry in step.
pub(super) fn conflict_backoff(n: u32) -> Duration {
    use std::hash::BuildHasher;
    let full = CONFLICT_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(CONFLICT_BACKOFF_MAX);
    let half = full / 2;
    // A fresh randomly keyed hasher per call: random enough for jitter, without a dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(n);
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(r % nanos.max(1))
}
pub(super) fn refusal_text(e: &StoreError) -> String {
    let inner = match e {
        StoreError::Refused(sqlx::Error::Database(db)) => db.message().to_string(),
        other => other.to_string(),
    };
    format!("The database cannot store this command: {inner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_backoff_doubles_from_10_ms_is_capped_and_jittered_within_its_half() {
        for n in 1..=CONFLICT_ATTEMPTS + 20 {
            let full = (CONFLICT_BACKOFF * 2u32.pow(n.min(20) - 1)).min(CONFLICT_BACKOFF_MAX);
            for _ in 0..50 {
                let w = conflict_backoff(n);
                assert!(
                    w >= full / 2 && w < full,
                    "attempt {n}: {w:?} not in [{:?}, {full:?})",
                    full / 2
                );
            }
        }
        // Jittered: two writers that collided do not wait the same.
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| conflict_backoff(4)).collect();
        assert!(waits.len() > 1);
    }
}
