-- The append-only event log, the projection of the current Event view, and the stored replies.

-- One row per accepted command: the fields it set, as validated. Rows are never updated or
-- deleted (a trigger refuses it); versions per event run 1..n without gaps (the primary key
-- refuses a repeat, the processor computes n+1 under a row lock on the view).
CREATE TABLE event_log (
    event_uuid       uuid        NOT NULL,
    version          bigint      NOT NULL CHECK (version >= 1),
    request_id       text        NOT NULL,
    change           jsonb       NOT NULL,
    recorded_at      timestamptz NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    PRIMARY KEY (event_uuid, version)
);

CREATE FUNCTION event_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER event_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_is_append_only();

-- The projection: authentik's Event as a GET would read it. Always equal to a fold of event_log.
CREATE TABLE events (
    event_uuid uuid        PRIMARY KEY,
    version    bigint      NOT NULL CHECK (version >= 1),
    "user"     jsonb       NOT NULL,
    action     text        NOT NULL,
    app        text        NOT NULL,
    context    jsonb       NOT NULL,
    client_ip  text,
    created    timestamptz NOT NULL,
    expires    timestamptz NOT NULL,
    brand      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL
);

-- One row per handled request_id: the reply it got, byte for byte, so that a redelivered
-- command is answered the same way, and a reused request_id with other content is detected.
CREATE TABLE command_replies (
    request_id       text        PRIMARY KEY,
    fingerprint      bytea       NOT NULL,
    event_uuid       uuid,
    status           smallint    NOT NULL,
    version          bigint,
    reply            bytea       NOT NULL,
    handled_at       timestamptz NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);

CREATE INDEX command_replies_event_uuid ON command_replies (event_uuid);
