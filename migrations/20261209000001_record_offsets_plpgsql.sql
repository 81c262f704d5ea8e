-- event_updater_record_offsets again, the same statement in PL/pgSQL instead of SQL: the write
-- functions call it once per batch, and PostgreSQL parses and plans a SQL function's body anew
-- on every call, where a PL/pgSQL function keeps its statement's plan for the session. Same
-- signature and meaning (expand/contract: every release calls it the same way).
CREATE OR REPLACE FUNCTION event_updater_record_offsets(
    offset_topic text[], offset_partition integer[], offset_applied bigint[], written_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
END;
$$;
