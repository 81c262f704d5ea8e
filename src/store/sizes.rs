//! What a batch would load and answer, in bytes, before it is loaded: the size of each command's
//! stored reply (a redelivery is answered with it) and of the view of the event it names (a new
//! reply carries the event). The consumer cuts a batch where these add up past its byte bound
//! ([`fitting_prefix`]) and decides the rest in the next batch, so that neither the stored
//! replies a redelivered batch loads nor the replies a batch produces are ever held by the
//! hundred (a reply can be up to `MAX_REPLY_BYTES`, about 1 MB).

use std::collections::HashSet;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::StoreError;

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

/// The sizes of `probes`, in their order; one statement, lookups by primary key. A column of
/// under 2,000 bytes is measured by its stored size (PostgreSQL compresses and moves out of
/// line only larger ones); a larger one by its text, which is what a reply carries.
pub async fn sizes(pool: &PgPool, probes: &[Probe<'_>]) -> Result<Vec<Sizes>, StoreError> {
    let scopes: Vec<Option<&[u8]>> = probes.iter().map(|p| p.scope).collect();
    let ids: Vec<&str> = probes.iter().map(|p| p.request_id).collect();
    let uuids: Vec<Option<Uuid>> = probes.iter().map(|p| p.event_uuid).collect();
    let rows = sqlx::query(SIZES)
        .bind(&scopes)
        .bind(&ids)
        .bind(&uuids)
        .fetch_all(pool)
        .await?;
    let mut out = vec![Sizes::default(); probes.len()];
    for r in &rows {
        let i: i64 = r.try_get("i")?;
        let Some(s) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) else {
            continue;
        };
        let size = |col: &str| -> Result<Option<usize>, StoreError> {
            Ok(r.try_get::<Option<i64>, _>(col)?
                .map(|n| usize::try_from(n).unwrap_or(0)))
        };
        s.stored_reply = size("stored_reply")?;
        s.view = size("view")?;
    }
    Ok(out)
}

const SIZES: &str = r#"
WITH k AS (
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::uuid[]) WITH ORDINALITY AS k(scope, request_id, event_uuid, i)
)
SELECT k.i,
       octet_length(c.reply)::int8 AS stored_reply,
       CASE WHEN e.event_uuid IS NULL THEN NULL
            WHEN pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand) < 2000
                THEN (pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand))::int8
            ELSE (octet_length(e."user"::text) + octet_length(e.context::text) + octet_length(e.brand::text))::int8
       END AS view
FROM k
LEFT JOIN command_replies c ON c.scope = k.scope AND c.request_id = k.request_id
LEFT JOIN events e ON e.event_uuid = k.event_uuid
"#;

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
