-- Inbox: the ids of events this service has applied. Written in the same
-- transaction as the state change, so a redelivered event is a no-op.
CREATE TABLE IF NOT EXISTS inbox (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    processed_at BIGINT NOT NULL
);

-- Outbox: events written in the same transaction as the state change that caused
-- them, published by the relay. event_id is a UUID v7, so ordering by it is
-- ordering by creation within a process.
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    message_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    envelope TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);

CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (event_id) WHERE sent_at IS NULL;
