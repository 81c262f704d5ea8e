-- Nothing looks stored replies up by event: the index only cost a random insert per command
-- (and full-page images in the WAL once the table is large).
DROP INDEX IF EXISTS command_replies_event_uuid;
