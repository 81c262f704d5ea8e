//! Applying a batch in PostgreSQL, with retries for an unavailable database, concurrent writers
//! and failing statements, and the isolation of a command the database refuses, keeps failing or
//! that keeps conflicting.
//!
//! Invariants kept here:
//! - Every command of a batch gets exactly one outcome, in the batch's order, and the pieces a
//!   batch is split into are applied one after the other in that order, so a partition's order
//!   holds (a later command is decided on the effects of the earlier ones that were applied).
//! - Only an unavailable database is retried without bound (until shutdown); a concurrent
//!   writer ([`CONFLICT_ATTEMPTS`]) and a failing statement ([`FAILURE_ATTEMPTS`]) are retried a
//!   bounded number of times, so no command can stall its partition for good.
//! - A command that is not applied gets an answer stored under its request id (so a redelivery
//!   gets the same bytes, never a late apply), and the reply texts never carry PostgreSQL's own
//!   error messages (those go to the log): a fixed text and the SQLSTATE.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;

use tokio::sync::watch;

use crate::domain::command::{Action, Command};
use crate::domain::decide::{unstored, Outcome, OutcomeKind, Source};
use crate::domain::reply::detail;
use crate::metrics::{self, ConflictScope, DbErrorKind};
use crate::store::{self, Applied, Feed, Fit, StoreError};

use super::parts::{Fetched, PipelineParts};

/// Most attempts at one batch, and then at each of its commands alone, while concurrent writers
/// keep conflicting with it (see `persist_retrying`).
pub const CONFLICT_ATTEMPTS: u32 = 8;
/// The first wait after a conflict; it doubles with each further conflict, up to
/// [`CONFLICT_BACKOFF_MAX`], and is jittered.
pub(super) const CONFLICT_BACKOFF: Duration = Duration::from_millis(10);
pub(super) const CONFLICT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Most attempts at a whole batch, and at a single command, while the database fails the
/// statement ([`StoreError::Failed`]: a statement or lock timeout, out of memory, a missing
/// function, an unknown SQLSTATE); the halves a failing batch is split into get one attempt
/// each. With the default timeouts, three lock timeouts (5 s each) outlast the
/// idle-in-transaction timeout (10 s) that frees the locks of a frozen processor's session.
pub const FAILURE_ATTEMPTS: u32 = 3;

/// The first wait after an unavailable database or a failed statement; it doubles up to
/// [`RETRY_BACKOFF_MAX`].
pub(super) const RETRY_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The `detail` of the 409 a command gets when concurrent writers kept changing its event for
/// [`CONFLICT_ATTEMPTS`] attempts: it was not applied, and its request id keeps this answer.
pub const KEPT_CONFLICTING: &str = "Concurrent writers kept changing this event while the command \
    was being applied; it was not applied. Send it again with a new request_id.";

/// How the `detail` of the 500 a command gets begins when the database kept failing it alone
/// ([`FAILURE_ATTEMPTS`]); `failure_text` adds the SQLSTATE. It was not applied, its request
/// id keeps this answer, and a copy of the command goes to the DLQ.
pub const DATABASE_FAILED: &str = "The database kept failing this command; it was not applied.";

/// How the `dlq-reason` of a command the database kept failing begins (`failure_reason`).
pub const DATABASE_FAILED_REASON: &str = "the database kept failing this command";

/// How the `detail` of the 400 a command gets when the database refused its data begins
/// (`refusal_text`).
pub const DATABASE_REFUSED: &str = "The database cannot store this command:";

/// Applies the batch, retrying while the database is unavailable, a concurrent writer conflicts
/// or a statement fails; then isolates what cannot pass, so that only the offending command is
/// answered with an error and the others are applied:
/// - a batch whose statement keeps failing ([`StoreError::Failed`]) is split in halves, each
///   applied in turn (and split again while it fails), down to single commands;
/// - a batch the database refuses the data of, or that still conflicts after
///   [`CONFLICT_ATTEMPTS`], is applied one command at a time;
/// - a single command that still cannot pass is answered by [`answer_unapplied`]: 400 for
///   refused data, 409 [`KEPT_CONFLICTING`], 500 [`DATABASE_FAILED`] (dead-lettered).
///
/// With the outcomes, the batch's part of the change feed (see [`store::feed`]), its pieces'
/// parts in the order they were applied, and how many of the batch's commands were handled: the
/// first attempt at the whole batch reads it with `fit` and applies only the leading commands
/// whose loads and replies fit (at least one; the caller takes the rest up again). A batch
/// that is split for failing is applied whole, its pieces uncut. `None`: shutdown came first.
pub(super) async fn persist_batch(
    shared: &PipelineParts,
    batch: &[Fetched],
    fit: Fit<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Vec<Outcome>, Feed, usize)> {
    let commands: Vec<(Command, Source)> = batch
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
    let mut taken = commands.len();
    let mut fit = Some(fit);
    let mut out = Vec::with_capacity(commands.len());
    let mut feed = Feed::default();
    // Pieces still to apply, in the batch's order, each with the attempts a failing statement
    // gets: the whole batch and single commands FAILURE_ATTEMPTS, the halves of a split one.
    let mut pending: VecDeque<(Vec<(Command, Source)>, u32)> = VecDeque::new();
    pending.push_back((commands, FAILURE_ATTEMPTS));
    while let Some((mut piece, attempts)) = pending.pop_front() {
        let attempts = if piece.len() == 1 {
            FAILURE_ATTEMPTS
        } else {
            attempts
        };
        // Only the first attempt at the whole batch is fitted (and cut).
        let piece_fit = fit.take();
        let e = match persist_retrying(shared, &piece, piece_fit, attempts, shutdown).await? {
            Ok(a) => {
                if a.taken < piece.len() {
                    // The whole batch, cut: nothing else is pending.
                    taken = a.taken;
                }
                feed.extend(a.feed, out.len());
                out.extend(a.outcomes);
                continue;
            }
            Err(e) => e,
        };
        if piece.len() == 1 {
            let c = piece.pop()?;
            out.push(answer_unapplied(shared, c, &e, shutdown).await?);
            continue;
        }
        if matches!(e, StoreError::Failed(_) | StoreError::Corrupt(_)) {
            let second = piece.split_off(piece.len() / 2);
            tracing::warn!(
                error = %e.chain(),
                size = piece.len() + second.len(),
                "the database kept failing a batch; applying its halves in turn"
            );
            pending.push_front((second, 1));
            pending.push_front((piece, 1));
            continue;
        }
        if matches!(e, StoreError::Conflict(_)) {
            metrics::record_kept_conflicting(ConflictScope::Batch);
        }
        tracing::warn!(
            error = %e.chain(),
            size = piece.len(),
            "batch not applied; applying its commands one by one"
        );
        for c in piece.into_iter().rev() {
            pending.push_front((vec![c], FAILURE_ATTEMPTS));
        }
    }
    Some((out, feed, taken))
}

/// Answers a command that could not be applied, without applying it: a 400 when the database
/// refused its data ([`refusal_text`]), a 409 ([`KEPT_CONFLICTING`]) when it still conflicted
/// after [`CONFLICT_ATTEMPTS`], a 500 ([`failure_text`]) when the database kept failing its
/// statement; the 500's command is also copied to the DLQ ([`failure_reason`]). PostgreSQL's
/// own message goes to the log only. The answer is stored with its request id like any other
/// (it writes no event row, so no concurrent writer of the event, nor a lock on its row, can
/// hold it up), so a redelivery gets the same bytes and never a late apply; only if even that
/// cannot be stored is it answered unstored.
pub(super) async fn answer_unapplied(
    shared: &PipelineParts,
    (cmd, source): (Command, Source),
    e: &StoreError,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let (status, text, dead_letter) = match e {
        StoreError::Conflict(_) => {
            metrics::record_kept_conflicting(ConflictScope::Command);
            tracing::warn!(
                request_id = %cmd.request_id,
                error = %e.chain(),
                attempts = CONFLICT_ATTEMPTS,
                "the event kept changing under concurrent writers; the command is not applied and \
                answered 409"
            );
            (409, KEPT_CONFLICTING.to_string(), None)
        }
        StoreError::Refused(_) => {
            tracing::warn!(
                request_id = %cmd.request_id,
                error = %e.chain(),
                "the database refused a command; answering 400"
            );
            (400, refusal_text(e), None)
        }
        _ => {
            let sqlstate = e.sqlstate();
            metrics::record_db_failed_command(sqlstate.as_deref());
            tracing::error!(
                request_id = %cmd.request_id,
                error = %e.chain(),
                sqlstate = sqlstate.as_deref().unwrap_or("none"),
                attempts = FAILURE_ATTEMPTS,
                "the database kept failing a command; it is not applied, answered 500 and \
                dead-lettered"
            );
            (
                500,
                failure_text(sqlstate.as_deref()),
                Some(failure_reason(sqlstate.as_deref())),
            )
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
    let mut outcome =
        match persist_retrying(shared, &single, None, FAILURE_ATTEMPTS, shutdown).await? {
            Ok(mut a) => a.outcomes.pop()?,
            Err(e) => {
                // Even the answer cannot be stored: answer without storing it.
                tracing::error!(error = %e.chain(), status, "could not store an error reply");
                let [(cmd, _)] = single;
                unstored(&cmd, status, detail(text), OutcomeKind::New)
            }
        };
    outcome.dead_letter = dead_letter.filter(|_| outcome.kind == OutcomeKind::New);
    Some(outcome)
}

/// Applies `commands` as one batch, retrying what can pass:
/// - a database that is unavailable: for as long as it takes, with back-off ([`RETRY_BACKOFF`]
///   doubling to [`RETRY_BACKOFF_MAX`]), until shutdown;
/// - a concurrent writer (a tripped fence that also conflicted on the locking path): at most
///   [`CONFLICT_ATTEMPTS`] attempts in all, waiting [`conflict_backoff`] between them; then the
///   conflict is returned, so that a command that keeps conflicting cannot stall its partition;
/// - a failed statement ([`StoreError::Failed`], or stored data that cannot be read): at most
///   `failures` attempts in all, with the same back-off as an unavailable database; then the
///   error is returned, so that a failure that repeats cannot stall the partition.
///
/// `None`: shutdown while waiting; `Some(Err)`: refused data, or a conflict or a failure after
/// its bound (never an unavailable database). The feed part is collected where the change
/// feed is on (`CHANGES_TOPIC` or `VIEW_TOPIC` set).
pub(super) async fn persist_retrying(
    shared: &PipelineParts,
    commands: &[(Command, Source)],
    fit: Option<Fit<'_>>,
    failures: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<Applied, StoreError>> {
    let mut backoff = RETRY_BACKOFF;
    let mut conflicts = 0;
    let mut failed = 0;
    loop {
        let started = Instant::now();
        let (rules, now) = (shared.cfg.batch_settings(), Utc::now());
        let feed = shared.cfg.feed_enabled();
        let applied = store::apply_batch_timed(&shared.pool, commands, rules, now, feed, fit).await;
        let wait = match applied {
            Ok(o) => {
                metrics::record_batch(o.taken, started.elapsed(), Some(o.parts));
                shared.health.database_ok.store(true, Ordering::Relaxed);
                return Some(Ok(o));
            }
            Err(e @ StoreError::Conflict(_)) => {
                metrics::record_db_error(DbErrorKind::Conflict);
                shared.health.database_ok.store(true, Ordering::Relaxed);
                conflicts += 1;
                if conflicts >= CONFLICT_ATTEMPTS {
                    return Some(Err(e));
                }
                let wait = conflict_backoff(conflicts);
                tracing::debug!(
                    error = %e.chain(),
                    attempt = conflicts,
                    retry_in = ?wait,
                    "concurrent writer; retrying the batch"
                );
                wait
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Url(_) | StoreError::Migrate(_))) => {
                metrics::record_db_error(DbErrorKind::Unavailable);
                shared.health.database_ok.store(false, Ordering::Relaxed);
                tracing::warn!(
                    error = %e.chain(),
                    retry_in = ?backoff,
                    "database unavailable; retrying the batch"
                );
                let b = backoff;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                b
            }
            Err(e @ (StoreError::Failed(_) | StoreError::Corrupt(_))) => {
                metrics::record_db_error(DbErrorKind::Failed);
                // The database answered: it is there, the statement is what fails.
                shared.health.database_ok.store(true, Ordering::Relaxed);
                failed += 1;
                if failed >= failures {
                    return Some(Err(e));
                }
                tracing::warn!(
                    error = %e.chain(),
                    sqlstate = e.sqlstate().as_deref().unwrap_or("none"),
                    attempt = failed,
                    retry_in = ?backoff,
                    "the database failed the batch's statement; retrying it"
                );
                let b = backoff;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                b
            }
            Err(e) => {
                metrics::record_db_error(DbErrorKind::Refused);
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
/// The `detail` of the 400 for data the database refused: [`DATABASE_REFUSED`], what kind of
/// refusal it was (by SQLSTATE class) and the SQLSTATE; never PostgreSQL's message, which may
/// quote stored data or name the schema (it goes to the log).
pub(super) fn refusal_text(e: &StoreError) -> String {
    let sqlstate = e.sqlstate();
    let what = match sqlstate.as_deref().map(|c| c.get(..2).unwrap_or(c)) {
        Some("22") => "a value is not valid for the database",
        Some("23") => "it breaks an integrity constraint",
        Some("54") => "it exceeds a limit of the database",
        Some(_) => "the database refused its data",
        None => "a value could not be encoded or decoded",
    };
    match sqlstate {
        Some(code) => format!("{DATABASE_REFUSED} {what} (SQLSTATE {code})."),
        None => format!("{DATABASE_REFUSED} {what}."),
    }
}

/// The `detail` of the 500 for a command the database kept failing: [`DATABASE_FAILED`], the
/// SQLSTATE where there is one, and what to do.
pub(super) fn failure_text(sqlstate: Option<&str>) -> String {
    match sqlstate {
        Some(code) => {
            format!("{DATABASE_FAILED} SQLSTATE {code}. Send it again with a new request_id.")
        }
        None => format!("{DATABASE_FAILED} Send it again with a new request_id."),
    }
}

/// The `dlq-reason` of a command the database kept failing.
pub(super) fn failure_reason(sqlstate: Option<&str>) -> String {
    format!(
        "{DATABASE_FAILED_REASON} (SQLSTATE {}); it was not applied and was answered 500",
        sqlstate.unwrap_or("none")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_fixed_texts_with_the_sqlstate() {
        assert_eq!(
            failure_text(Some("57014")),
            "The database kept failing this command; it was not applied. SQLSTATE 57014. Send it \
            again with a new request_id."
        );
        assert_eq!(
            failure_text(None),
            "The database kept failing this command; it was not applied. Send it again with a new \
            request_id."
        );
        assert_eq!(
            failure_reason(Some("55P03")),
            "the database kept failing this command (SQLSTATE 55P03); it was not applied and was \
            answered 500"
        );
        let decode = StoreError::Refused(sqlx::Error::Decode("secret value 0x00".into()));
        let text = refusal_text(&decode);
        assert_eq!(
            text,
            "The database cannot store this command: a value could not be encoded or decoded."
        );
        assert!(!text.contains("secret"));
    }

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
