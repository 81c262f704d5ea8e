-- The highest offset applied per command partition, so that a record read again after its stored
-- reply was pruned (a lost or reset consumer-group offset) is answered without being applied
-- again, whatever IDEMPOTENCY_RETENTION is. Written in the same statement as the batch it
-- covers, never lowered (GREATEST). See src/store/mod.rs.
--
-- Expand only (migrations/README.md): the previous release's write function keeps its signature
-- and keeps working; it now records offsets too, so a processor of that release still running
-- during a rolling deploy keeps this table current. The new write function is a new name,
-- event_updater_write_batch_v2, with three more arrays.
CREATE TABLE applied_offsets (
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    applied_offset bigint      NOT NULL CHECK (applied_offset >= 0),
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- What was applied before this migration: per partition, the source offset of the row written
-- last (not the highest one: a topic deleted and created again restarts at 0, and only the rows
-- of its current incarnation are the latest). One scan of event_log and command_replies.
INSERT INTO applied_offsets (topic, partition, applied_offset, updated_at)
SELECT DISTINCT ON (t, p) t, p, o, w
FROM (
    SELECT source_topic AS t, source_partition AS p, source_offset AS o, recorded_at AS w FROM event_log
    UNION ALL
    SELECT source_topic, source_partition, source_offset, handled_at FROM command_replies
) AS rows
WHERE o >= 0
ORDER BY t, p, w DESC, o DESC;

-- Raises the stored offsets to the given ones (never lowers them); rows in (topic, partition)
-- order, so two writers of the same partitions take their row locks in one order.
CREATE FUNCTION event_updater_record_offsets(
    offset_topic text[], offset_partition integer[], offset_applied bigint[], written_at timestamptz
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO applied_offsets (topic, partition, applied_offset, updated_at)
    SELECT x.t, x.p, max(x.o), written_at
    FROM unnest(offset_topic, offset_partition, offset_applied) AS x(t, p, o)
    WHERE x.o >= 0
    GROUP BY x.t, x.p
    ORDER BY x.t, x.p
    ON CONFLICT (topic, partition) DO UPDATE
        SET applied_offset = GREATEST(applied_offsets.applied_offset, EXCLUDED.applied_offset),
            updated_at = EXCLUDED.updated_at
        WHERE EXCLUDED.applied_offset > applied_offsets.applied_offset;
$$;

-- The batch write of 20261130000003 with the fences unchanged (event_log's primary key refuses a
-- version another writer added since the read; a view row is inserted only where none exists and
-- updated only at the version it was read at, 40001 otherwise; command_replies' primary key
-- refuses a (scope, request id) handled meanwhile), plus, in the same statement, the applied
-- offsets of the batch (offset_*: per partition, the highest offset of the batch's commands,
-- whatever their outcome). All of it or none of it.
CREATE FUNCTION event_updater_write_batch_v2(
    log_uuid uuid[], log_version bigint[], log_request_id text[], log_change text[],
    log_topic text[], log_partition integer[], log_offset bigint[],
    view_uuid uuid[], view_version bigint[], view_read_version bigint[], view_user text[],
    view_action text[], view_app text[], view_context text[], view_client_ip text[],
    view_created timestamptz[], view_expires timestamptz[], view_brand text[],
    reply_scope bytea[], reply_request_id text[], reply_fingerprint bytea[], reply_event_uuid uuid[],
    reply_status smallint[], reply_version bigint[], reply_bytes bytea[],
    reply_topic text[], reply_partition integer[], reply_offset bigint[],
    offset_topic text[], offset_partition integer[], offset_applied bigint[],
    written_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    updated bigint;
    expected bigint;
BEGIN
    INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
    SELECT x.u, x.v, x.r, x.c::jsonb, written_at, x.t, x.p, x.o
    FROM unnest(log_uuid, log_version, log_request_id, log_change, log_topic, log_partition, log_offset)
         AS x(u, v, r, c, t, p, o);

    INSERT INTO events (event_uuid, version, "user", action, app, context, client_ip, created, expires, brand, updated_at)
    SELECT x.u, x.v, x.us::jsonb, x.a, x.ap, x.co::jsonb, x.ip, x.cr, x.ex, x.br::jsonb, written_at
    FROM unnest(view_uuid, view_version, view_read_version, view_user, view_action, view_app,
                view_context, view_client_ip, view_created, view_expires, view_brand)
         AS x(u, v, rv, us, a, ap, co, ip, cr, ex, br)
    WHERE x.rv = 0;

    UPDATE events e SET
        version = x.v, "user" = x.us::jsonb, action = x.a, app = x.ap, context = x.co::jsonb,
        client_ip = x.ip, expires = x.ex, brand = x.br::jsonb, updated_at = written_at
    FROM unnest(view_uuid, view_version, view_read_version, view_user, view_action, view_app,
                view_context, view_client_ip, view_expires, view_brand)
         AS x(u, v, rv, us, a, ap, co, ip, ex, br)
    WHERE x.rv > 0 AND e.event_uuid = x.u AND e.version = x.rv;
    GET DIAGNOSTICS updated = ROW_COUNT;
    SELECT count(*) INTO expected FROM unnest(view_read_version) AS rv WHERE rv > 0;
    IF updated <> expected THEN
        RAISE EXCEPTION 'event_updater_write_batch: % of % event views moved on since they were read',
            expected - updated, expected
            USING ERRCODE = 'serialization_failure';
    END IF;

    INSERT INTO command_replies (scope, request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
    SELECT x.sc, x.r, x.f, x.u, x.s, x.v, x.b, written_at, x.t, x.p, x.o
    FROM unnest(reply_scope, reply_request_id, reply_fingerprint, reply_event_uuid, reply_status,
                reply_version, reply_bytes, reply_topic, reply_partition, reply_offset)
         AS x(sc, r, f, u, s, v, b, t, p, o);

    -- Last, so that two writers of one partition lock its offset row after their event rows.
    PERFORM event_updater_record_offsets(offset_topic, offset_partition, offset_applied, written_at);
END;
$$;

-- The write of 20261130000003 (same signature, same fences, same rows), now also raising the
-- applied offsets to the highest source offset among its log rows and stored replies: the
-- previous release's processor calls this.
CREATE OR REPLACE FUNCTION event_updater_write_batch(
    log_uuid uuid[], log_version bigint[], log_request_id text[], log_change text[],
    log_topic text[], log_partition integer[], log_offset bigint[],
    view_uuid uuid[], view_version bigint[], view_read_version bigint[], view_user text[],
    view_action text[], view_app text[], view_context text[], view_client_ip text[],
    view_created timestamptz[], view_expires timestamptz[], view_brand text[],
    reply_scope bytea[], reply_request_id text[], reply_fingerprint bytea[], reply_event_uuid uuid[],
    reply_status smallint[], reply_version bigint[], reply_bytes bytea[],
    reply_topic text[], reply_partition integer[], reply_offset bigint[],
    written_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_updater_write_batch_v2(
        log_uuid, log_version, log_request_id, log_change, log_topic, log_partition, log_offset,
        view_uuid, view_version, view_read_version, view_user, view_action, view_app,
        view_context, view_client_ip, view_created, view_expires, view_brand,
        reply_scope, reply_request_id, reply_fingerprint, reply_event_uuid, reply_status,
        reply_version, reply_bytes, reply_topic, reply_partition, reply_offset,
        log_topic || reply_topic, log_partition || reply_partition, log_offset || reply_offset,
        written_at);
END;
$$;
