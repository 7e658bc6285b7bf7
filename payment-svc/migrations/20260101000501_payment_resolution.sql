-- A call that timed out or failed with a 5xx may have charged: such a payment is
-- `ambiguous`, and is looked up by its idempotency key before it is compensated.
ALTER TABLE payments ADD COLUMN ambiguous BIGINT NOT NULL DEFAULT 0;
-- Set when the order was cancelled while the charge was still queued: the queue
-- worker stops the payment (or refunds it, if the charge won the race).
ALTER TABLE payments ADD COLUMN stop_reason TEXT;
