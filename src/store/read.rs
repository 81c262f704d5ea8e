//! The batch's read: one statement, no locks, for everything deciding a batch needs (applied
//! offsets, token grants, stored replies, views) and the sizes of what it would load.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::auth::{AuthMode, Credentials, TokenGrant};
use crate::domain::command::Command;
use crate::domain::decide::{Source, StoredAnswer, StoredState};

use super::{sizes, view_from_row, StoreError};

/// No value is withheld from a read ([`read_batch`]).
pub(super) const UNCAPPED: i64 = i64::MAX;

/// What one read of a batch found ([`read_batch`]): what deciding it needs, and the sizes of the
/// stored replies and views, including those withheld for being over the read's cap.
#[derive(Debug, Default)]
pub(super) struct BatchRead {
    pub(super) known: StoredState,
    /// Stored replies' lengths, by scope and request id.
    reply_sizes: HashMap<(Vec<u8>, String), usize>,
    /// Views' lengths (see [`sizes::Sizes::view`]), by event.
    view_sizes: HashMap<Uuid, usize>,
    /// Stored replies over the cap, read without their bytes (not in `known`).
    withheld_replies: Vec<(Vec<u8>, String)>,
    /// Views over the cap, read without their JSON columns (not in `known`).
    withheld_views: Vec<Uuid>,
}

impl BatchRead {
    /// The sizes of what each of `commands` would load and answer, in their order.
    pub(super) fn sizes(
        &self,
        commands: &[(Command, Source)],
        auth_mode: AuthMode,
    ) -> Vec<sizes::Sizes> {
        commands
            .iter()
            .map(|(c, _)| sizes::Sizes {
                stored_reply: c.scope(auth_mode).and_then(|scope| {
                    self.reply_sizes
                        .get(&(scope.to_vec(), c.request_id.clone()))
                        .copied()
                }),
                view: c
                    .action
                    .event_uuid_to_apply()
                    .and_then(|u| self.view_sizes.get(&u).copied()),
            })
            .collect()
    }

    /// Whether a value `commands` need was withheld.
    pub(super) fn withholds_any_of(
        &self,
        commands: &[(Command, Source)],
        auth_mode: AuthMode,
    ) -> bool {
        if self.withheld_replies.is_empty() && self.withheld_views.is_empty() {
            return false;
        }
        commands.iter().any(|(c, _)| {
            let reply = c.scope(auth_mode).is_some_and(|scope| {
                self.withheld_replies
                    .iter()
                    .any(|(s, r)| s.as_slice() == scope && *r == c.request_id)
            });
            let view = c
                .action
                .event_uuid_to_apply()
                .is_some_and(|u| self.withheld_views.contains(&u));
            reply || view
        })
    }
}

/// One statement, no locks, for everything deciding `commands` needs: the applied offsets of
/// their partitions, the grants of their tokens, the stored answers of their request ids and
/// (with `views`) the views of their events, each a lookup by primary or unique key, and the
/// sizes of the stored replies and views. A stored reply or view whose size is over `cap` is
/// withheld (its size only), so that one read of a batch that will be cut
/// ([`sizes::fitting_prefix`]) does not load what is beyond the cut.
///
/// One statement is one snapshot: a record at or below the applied offsets read was handled by
/// a batch that committed before it, so its stored reply (if the retention kept it) is read
/// too. (Read separately, the offsets would have to be read first: a writer holding stale
/// stored replies, a zombie, could otherwise see newer offsets and answer "already applied"
/// where another writer stored a reply meanwhile.)
pub(super) async fn read_batch(
    conn: &mut PgConnection,
    commands: &[(Command, Source)],
    auth_mode: AuthMode,
    views: bool,
    cap: i64,
) -> Result<BatchRead, StoreError> {
    // The (scope, request id) pairs to look up; a command without a scope (no usable
    // credentials) has nothing stored.
    let (scopes, ids): (Vec<&[u8]>, Vec<&str>) = commands
        .iter()
        .filter_map(|(c, _)| Some((c.scope(auth_mode)?, c.request_id.as_str())))
        .unzip();
    let mut uuids: Vec<Uuid> = match views {
        true => commands
            .iter()
            .filter_map(|(c, _)| c.action.event_uuid_to_apply())
            .collect(),
        false => Vec::new(),
    };
    uuids.sort_unstable();
    uuids.dedup();
    let hashes = match auth_mode {
        AuthMode::Required => token_hashes(commands),
        AuthMode::Disabled => Vec::new(),
    };
    let mut partitions: Vec<(&str, i32)> = commands
        .iter()
        .map(|(_, s)| (s.topic.as_str(), s.partition))
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    let (topics, partitions): (Vec<&str>, Vec<i32>) = partitions.into_iter().unzip();
    let rows = sqlx::query(READ_BATCH)
        .bind(&uuids)
        .bind(&scopes)
        .bind(&ids)
        .bind(&hashes)
        .bind(&topics)
        .bind(&partitions)
        .bind(cap)
        .fetch_all(&mut *conn)
        .await?;
    let mut read = BatchRead::default();
    let size = |r: &sqlx::postgres::PgRow| -> Result<usize, StoreError> {
        Ok(usize::try_from(r.try_get::<i64, _>("size")?).unwrap_or(usize::MAX))
    };
    for r in &rows {
        match r.try_get::<i32, _>("kind")? {
            1 => {
                let (uuid, size) = (r.try_get::<Uuid, _>("event_uuid")?, size(r)?);
                read.view_sizes.insert(uuid, size);
                if i64::try_from(size).unwrap_or(i64::MAX) > cap {
                    read.withheld_views.push(uuid);
                    continue;
                }
                let s = view_from_row(r)?;
                read.known.states.insert(s.event_uuid, s);
            }
            2 => {
                let scope: Vec<u8> = r.try_get("scope")?;
                let request_id: String = r.try_get("request_id")?;
                let size = size(r)?;
                read.reply_sizes
                    .insert((scope.clone(), request_id.clone()), size);
                if i64::try_from(size).unwrap_or(i64::MAX) > cap {
                    read.withheld_replies.push((scope, request_id));
                    continue;
                }
                let status: i32 = r.try_get("status")?;
                read.known.handled.entry(scope).or_default().insert(
                    request_id,
                    StoredAnswer {
                        fingerprint: r.try_get("fingerprint")?,
                        status: u16::try_from(status).unwrap_or_default(),
                        reply: Arc::new(r.try_get("reply")?),
                        change: r
                            .try_get::<Option<Uuid>, _>("event_uuid")?
                            .zip(r.try_get::<Option<i64>, _>("version")?),
                    },
                );
            }
            3 => {
                let h: Vec<u8> = r.try_get("scope")?;
                if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                    read.known.grants.insert(
                        h,
                        TokenGrant {
                            usable: r.try_get("usable")?,
                            can_change_event: r.try_get("can_change_event")?,
                        },
                    );
                }
            }
            _ => {
                read.known.applied.insert(
                    (r.try_get("request_id")?, r.try_get("status")?),
                    r.try_get("version")?,
                );
            }
        }
    }
    Ok(read)
}

/// [`read_batch`]'s statement, one lookup by primary or unique key per row:
/// - kind 1: views ($1), with their size (as [`sizes::Sizes::view`] measures it), the JSON
///   columns withheld over the cap ($7);
/// - kind 2: stored answers by (scope, request id) ($2, $3), with the event and version they
///   appended, if any, and the reply's length, the reply withheld over the cap;
/// - kind 3: tokens by hash ($4; the hash in `scope`);
/// - kind 4: applied offsets by (topic, partition) ($5, $6): the topic in `request_id`, the
///   partition in `status`, the offset in `version`.
const READ_BATCH: &str = r#"
SELECT 1 AS kind, e.event_uuid, e.version,
       CASE WHEN z.size <= $7 THEN e."user"::text END AS "user", e.action, e.app,
       CASE WHEN z.size <= $7 THEN e.context::text END AS context,
       e.client_ip, e.created, e.expires,
       CASE WHEN z.size <= $7 THEN e.brand::text END AS brand,
       NULL::text AS request_id, NULL::bytea AS fingerprint, NULL::int4 AS status, NULL::bytea AS reply,
       NULL::bytea AS scope, NULL::bool AS can_change_event, NULL::bool AS usable, z.size
FROM events e
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand) < 2000
            THEN (pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand))::int8
        ELSE (octet_length(e."user"::text) + octet_length(e.context::text) + octet_length(e.brand::text))::int8
    END AS size
) z
WHERE e.event_uuid = ANY($1)
UNION ALL
SELECT 2, c.event_uuid, c.version, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       c.request_id, c.fingerprint, c.status::int4,
       CASE WHEN octet_length(c.reply) <= $7 THEN c.reply END, c.scope, NULL, NULL,
       octet_length(c.reply)::int8
FROM unnest($2::bytea[], $3::text[]) AS k(scope, request_id)
JOIN command_replies c ON c.scope = k.scope AND c.request_id = k.request_id
UNION ALL
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       token_hash, can_change_event, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()),
       0
FROM api_tokens WHERE token_hash = ANY($4)
UNION ALL
SELECT 4, NULL, a.applied_offset, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       a.topic, NULL, a.partition, NULL, NULL, NULL, NULL, 0
FROM unnest($5::text[], $6::int4[]) AS k(topic, partition)
JOIN applied_offsets a ON a.topic = k.topic AND a.partition = k.partition
"#;

/// The distinct token hashes a batch's commands present.
fn token_hashes(commands: &[(Command, Source)]) -> Vec<Vec<u8>> {
    let mut hashes: Vec<Vec<u8>> = commands
        .iter()
        .filter_map(|(c, _)| match &c.credentials {
            Credentials::Bearer(h) => Some(h.to_vec()),
            _ => None,
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}
