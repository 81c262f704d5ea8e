//! What a batch would load and answer, in bytes, before it is decided: the size of each
//! command's stored reply (a redelivery is answered with it) and of the view of the event it
//! names (a new reply carries the event), read with the batch (the store's one read measures
//! them, and withholds a value over [`value_cap`]). The batch is cut where these add up past
//! its byte bound ([`fitting_prefix`]) and the consumer decides the rest in the next batch, so
//! that neither the stored replies a redelivered batch loads nor the replies a batch produces
//! are ever held by the hundred (a reply can be up to `MAX_REPLY_BYTES`, about 1 MB).

use std::collections::HashSet;

use uuid::Uuid;

use crate::domain::auth::AuthMode;
use crate::domain::command::Command;
use crate::domain::decide::Source;

/// One command of a batch, as the size estimate needs it.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// The scope its stored reply would be under ([`crate::domain::command::Command::scope`]).
    pub scope: Option<&'a [u8]>,
    pub request_id: &'a str,
    /// The event it would change ([`crate::domain::command::Action::event_uuid_to_apply`]).
    pub event_uuid: Option<Uuid>,
    /// The bytes the command itself brings to its reply (its value's length).
    pub own_bytes: usize,
}

/// The sizes of what each command of a batch would load and answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Its stored reply's length, when its request id is handled in its scope.
    pub stored_reply: Option<usize>,
    /// The length of its event's view (`user`, `context` and `brand` as text), when it exists.
    pub view: Option<usize>,
}

/// A reply without an event in it (a 400, 404, 409, ...) is about this long at most, besides
/// what the command brings.
const SMALL_REPLY: usize = 1024;

/// How a batch is fitted to its byte bound when it is read ([`crate::store::apply_batch_timed`]):
/// the bound (`MAX_BATCH_BYTES`), and per command, in the batch's order, what the consumer
/// charges for it already and the bytes it brings to its reply (its value's length).
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    pub bound: usize,
    pub charged: &'a [usize],
    pub own_bytes: &'a [usize],
}

/// The largest stored reply or view one read of a batch of `commands` loads whole, for a batch
/// bound of `bound` bytes: its share of the bound (half of it for the replies, half for the
/// views), at least 8 KiB. A larger one is read by its size only, and read whole only when the
/// batch, cut to what fits, needs it: so one read loads at most about the bound (or 16 KiB a
/// command), whatever is stored.
pub fn value_cap(bound: usize, commands: usize) -> i64 {
    let share = bound / (2 * commands.max(1));
    i64::try_from(share.max(8 * 1024)).unwrap_or(i64::MAX)
}

/// The probes of `commands`, for [`fitting_prefix`]: `own_bytes` in the same order.
pub fn probes<'a>(
    commands: &'a [(Command, Source)],
    own_bytes: &[usize],
    auth_mode: AuthMode,
) -> Vec<Probe<'a>> {
    commands
        .iter()
        .zip(own_bytes)
        .map(|((c, _), own)| Probe {
            scope: c.scope(auth_mode),
            request_id: &c.request_id,
            event_uuid: c.action.event_uuid_to_apply(),
            own_bytes: *own,
        })
        .collect()
}

/// How many of `probes` (a prefix, at least one) fit in `bound` bytes, counting for each its
/// `extra` bytes (what the consumer already charges for it), its reply (the stored one, else
/// its event's view and its own bytes) and, once per event, the view the batch loads.
pub fn fitting_prefix(
    probes: &[Probe<'_>],
    sizes: &[Sizes],
    extra: &[usize],
    bound: usize,
) -> usize {
    let mut total = 0usize;
    let mut loaded: HashSet<Uuid> = HashSet::new();
    for (i, ((p, s), x)) in probes.iter().zip(sizes).zip(extra).enumerate() {
        let view = s.view.unwrap_or(0);
        let reply = s.stored_reply.unwrap_or(match p.event_uuid {
            Some(_) => view + p.own_bytes,
            None => SMALL_REPLY + p.own_bytes,
        });
        let load = match p.event_uuid {
            Some(u) if loaded.insert(u) => view,
            _ => 0,
        };
        total = total.saturating_add(x + reply + load);
        if total > bound && i > 0 {
            return i;
        }
    }
    probes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(event: Option<Uuid>) -> Probe<'static> {
        Probe {
            scope: Some(&[]),
            request_id: "r",
            event_uuid: event,
            own_bytes: 100,
        }
    }

    #[test]
    fn a_batch_is_cut_where_its_replies_and_loaded_views_pass_the_bound() {
        let big = Uuid::new_v4();
        let probes = vec![probe(Some(big)); 10];
        // Each reply carries the 900 KB event; the view is loaded once.
        let sizes = vec![
            Sizes {
                stored_reply: None,
                view: Some(900_000),
            };
            10
        ];
        let extra = vec![1_000; 10];
        // 900 KB loaded, then 901 KB + 1 KB per command.
        assert_eq!(fitting_prefix(&probes, &sizes, &extra, 8 << 20), 8);
        // At least one command, however large.
        assert_eq!(fitting_prefix(&probes, &sizes, &extra, 10), 1);
        // Stored replies of a redelivery count at their length.
        let stored = vec![
            Sizes {
                stored_reply: Some(2_000_000),
                view: Some(900_000),
            };
            10
        ];
        assert_eq!(fitting_prefix(&probes, &stored, &extra, 8 << 20), 3);
        // Small commands against small events all fit.
        let small = vec![
            Sizes {
                stored_reply: None,
                view: Some(50),
            };
            10
        ];
        assert_eq!(fitting_prefix(&probes, &small, &extra, 8 << 20), 10);
        // Commands that change no event: a small reply each.
        let none = vec![probe(None); 10];
        assert_eq!(
            fitting_prefix(&none, &vec![Sizes::default(); 10], &extra, 8 << 20),
            10
        );
    }
}
