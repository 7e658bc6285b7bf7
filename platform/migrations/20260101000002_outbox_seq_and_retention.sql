-- The outbox is relayed in commit order, by a sequence number, not by event_id:
-- UUIDv7 order is creation order within one process, which is not the order in
-- which transactions commit (nor comparable across replicas).
--
-- One statement for both databases. PostgreSQL makes BIGSERIAL a BIGINT with its
-- own sequence (outbox_seq_seq) and fills existing rows from it; SQLite takes any
-- type name, so it is a plain nullable integer column there (NUMERIC affinity,
-- integers stored as integers), which Tx::commit fills itself.
ALTER TABLE outbox ADD COLUMN seq BIGSERIAL;

-- Rows not sent yet go out in the order they always did (event_id), ahead of
-- every new row: new numbers come after the highest one present. Sent rows need
-- no number (they are never relayed again) and keep what they got.
UPDATE outbox
SET seq = (
    SELECT COUNT(*) FROM outbox AS earlier
    WHERE earlier.sent_at IS NULL AND earlier.event_id <= outbox.event_id
)
WHERE sent_at IS NULL;

-- The relay reads unsent rows by seq.
DROP INDEX IF EXISTS outbox_unsent;
CREATE INDEX IF NOT EXISTS outbox_unsent_by_seq ON outbox (seq) WHERE sent_at IS NULL;
-- SQLite's next number is MAX(seq) + 1, read from here.
CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox (seq);
-- Pruning: sent rows past their retention, and inbox ids past theirs.
CREATE INDEX IF NOT EXISTS outbox_by_sent_at ON outbox (sent_at);
CREATE INDEX IF NOT EXISTS inbox_by_processed_at ON inbox (processed_at);
