-- Tables of the shipped tasks. Portable SQL: runs on PostgreSQL and SQLite.

-- What send_report reads: the items of each chat's report.
CREATE TABLE IF NOT EXISTS report_items (
    chat_id BIGINT NOT NULL,
    label   TEXT   NOT NULL,
    amount  BIGINT NOT NULL,
    PRIMARY KEY (chat_id, label)
);

-- What send_report writes: one row per delivered report, keyed by task id,
-- so a redelivered task finds its own row and sends nothing twice.
CREATE TABLE IF NOT EXISTS report_deliveries (
    task_id      TEXT   PRIMARY KEY,
    chat_id      BIGINT NOT NULL,
    message_id   BIGINT NOT NULL,
    item_count   BIGINT NOT NULL,
    total        BIGINT NOT NULL,
    delivered_at BIGINT NOT NULL
);
