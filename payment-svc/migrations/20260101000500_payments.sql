-- One row per order: the charge, later perhaps its refund. Rows in PENDING,
-- DEFERRED or REFUND_PENDING are the work queue (and the durable fallback queue).
CREATE TABLE payments (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    payment_token TEXT NOT NULL,
    charge_id TEXT,
    refund_id TEXT,
    reason TEXT,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    cause_event_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX payments_due ON payments (next_attempt_at)
    WHERE status IN ('PENDING', 'DEFERRED', 'REFUND_PENDING');
