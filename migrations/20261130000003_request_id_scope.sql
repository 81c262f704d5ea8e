-- Request ids are scoped by credential: the same id sent with two tokens names two requests, and
-- a redelivery is found by (scope, request_id) even after its token was revoked. The scope is
-- the SHA-256 of the command's token where authentication is required, and empty where it is
-- disabled. Rows stored before this migration get the empty scope.
ALTER TABLE command_replies ADD COLUMN scope bytea NOT NULL DEFAULT '\x'::bytea;
ALTER TABLE command_replies DROP CONSTRAINT command_replies_pkey;
ALTER TABLE command_replies ADD PRIMARY KEY (scope, request_id);
ALTER TABLE command_replies ALTER COLUMN scope DROP DEFAULT;

DROP FUNCTION event_updater_write_batch(
    uuid[], bigint[], text[], text[], text[], integer[], bigint[],
    uuid[], bigint[], bigint[], text[], text[], text[], text[], text[],
    timestamptz[], timestamptz[], text[],
    text[], bytea[], uuid[], smallint[], bigint[], bytea[], text[], integer[], bigint[],
    timestamptz);

-- As in 20261130000001, with each stored reply's scope (reply_scope). The fences are unchanged:
--   * event_log's primary key refuses a version that another writer added since the read;
--   * a view row is inserted only where none exists and updated only at the version it was
--     read at (40001 otherwise);
--   * command_replies' primary key refuses a (scope, request id) handled meanwhile.
CREATE FUNCTION event_updater_write_batch(
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
END;
$$;
