-- A notification whose recipient is not known yet (the user's registration, or
-- the order, has not reached this service) is recorded UNDELIVERABLE at once,
-- never retried in the consumer, and sent if the contact arrives later.
ALTER TABLE notifications ADD COLUMN status TEXT NOT NULL DEFAULT 'SENT';
ALTER TABLE notifications ADD COLUMN undeliverable_reason TEXT;
