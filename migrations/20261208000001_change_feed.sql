-- The change feed (src/store/feed.rs): every change of the log is published to the changes topic
-- as a record rendered from its row alone, so the row must hold everything the record says. It
-- lacked the scope (the credential) of the command that caused it: a nullable column, NULL for
-- rows appended before this release or by the previous release during a rolling deploy (their
-- records say `"scope": null`, always the same bytes).
--
-- Expand only (migrations/README.md): adding a nullable column without a default rewrites no
-- row and fires no trigger (event_log stays append-only); event_updater_write_batch_v3 is the
-- new write, with the log rows' scopes; _v2 keeps its signature and now calls _v3 with NULL
-- scopes, so there is one copy of the write's body (and _v1 calls _v2, as before).
ALTER TABLE event_log ADD COLUMN scope bytea;

CREATE FUNCTION event_updater_write_batch_v3(
    log_uuid uuid[], log_version bigint[], log_request_id text[], log_change text[],
    log_topic text[], log_partition integer[], log_offset bigint[], log_scope bytea[],
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
    INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset, scope)
    SELECT x.u, x.v, x.r, x.c::jsonb, written_at, x.t, x.p, x.o, x.s
    FROM unnest(log_uuid, log_version, log_request_id, log_change, log_topic, log_partition, log_offset, log_scope)
         AS x(u, v, r, c, t, p, o, s);

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

-- The previous release's write (same signature, same fences, same rows), now by way of _v3,
-- without scopes.
CREATE OR REPLACE FUNCTION event_updater_write_batch_v2(
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
BEGIN
    PERFORM event_updater_write_batch_v3(
        log_uuid, log_version, log_request_id, log_change, log_topic, log_partition, log_offset,
        array_fill(NULL::bytea, ARRAY[coalesce(cardinality(log_uuid), 0)]),
        view_uuid, view_version, view_read_version, view_user, view_action, view_app,
        view_context, view_client_ip, view_created, view_expires, view_brand,
        reply_scope, reply_request_id, reply_fingerprint, reply_event_uuid, reply_status,
        reply_version, reply_bytes, reply_topic, reply_partition, reply_offset,
        offset_topic, offset_partition, offset_applied, written_at);
END;
$$;
