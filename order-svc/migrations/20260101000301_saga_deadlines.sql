-- Every open saga state has a durable deadline (DESIGN.md, the saga, 8): an order
-- still PENDING, PAYMENT_DEFERRED or CANCELLING past it is compensated, or handed
-- to an operator with the reason in `attention`.
ALTER TABLE orders ADD COLUMN deadline_at BIGINT;
ALTER TABLE orders ADD COLUMN attention TEXT;
CREATE INDEX orders_deadline ON orders (deadline_at) WHERE deadline_at IS NOT NULL;
