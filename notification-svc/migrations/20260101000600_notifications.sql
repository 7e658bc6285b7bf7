CREATE TABLE contacts (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE order_customers (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL
);

-- One notification per order and kind (confirmed, rejected, cancelled, delayed).
CREATE TABLE notifications (
    notification_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (order_id, kind)
);
