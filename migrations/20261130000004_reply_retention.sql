-- Stored replies are kept for IDEMPOTENCY_RETENTION, then deleted oldest first in small batches
-- (src/retention.rs: `WHERE handled_at < cutoff ORDER BY handled_at LIMIT n`). This index
-- finds them without a scan; it grows on the right only (handled_at is the write time), so it
-- costs an append per stored reply, not a random insert.
--
-- The migration runs in a transaction, so the index is built with a lock that holds writes
-- back while it is built. On a large existing table, build it beforehand with
--   CREATE INDEX CONCURRENTLY command_replies_handled_at ON command_replies (handled_at);
-- and this statement does nothing.
CREATE INDEX IF NOT EXISTS command_replies_handled_at ON command_replies (handled_at);
