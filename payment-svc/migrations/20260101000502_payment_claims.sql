-- Replicas of payment-svc share one PostgreSQL database and so one queue: a
-- worker claims the due rows it takes (FOR UPDATE SKIP LOCKED) until this time,
-- so each attempt is made once. Recording the outcome ends the claim; a replica
-- that dies with a claim leaves it to expire, and another one takes the row.
ALTER TABLE payments ADD COLUMN claimed_until BIGINT NOT NULL DEFAULT 0;
