-- Where an interrupted `event-updater feed backfill` resumes (src/store/backfill.rs): one row per
-- job (its arguments and target topics, `job`), holding the last log row (event_uuid, version)
-- of the last page whose records the broker acknowledged. The row exists only while a job is
-- unfinished: it is written before the first page, moved after each acknowledged page, and
-- deleted when the job completes (a rerun then starts over). Never moved past a record the
-- broker has not acknowledged, so a kill -9 of the tool at any point leaves it at or behind
-- what was published.
--
-- Expand only (migrations/README.md): a new table, which the previous release never reads.
CREATE TABLE feed_backfill_cursors (
    job           text        PRIMARY KEY,
    changes_topic text        NOT NULL,
    view_topic    text        NOT NULL,
    event_uuid    uuid,
    since         timestamptz,
    after_uuid    uuid        NOT NULL,
    after_version bigint      NOT NULL,
    published     bigint      NOT NULL DEFAULT 0 CHECK (published >= 0),
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
