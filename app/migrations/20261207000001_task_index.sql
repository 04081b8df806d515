-- The task index (courier::index): one row per finished task, written by
-- the workers in batches off the hot path, kept `index.retention`; the board
-- searches it. Portable SQL (PostgreSQL and SQLite). Times are Unix ms.

CREATE TABLE courier_task_index (
    task_id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    -- success, failed, cancelled
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    -- JSON object; values cut at 128 characters
    labels TEXT NOT NULL,
    -- JSON {"args": [...], "kwargs": {...}}: secret fields masked, cut at 4 KiB
    arguments TEXT NOT NULL,
    -- JSON, cut at 4 KiB
    result TEXT,
    error TEXT,
    started_at BIGINT,
    finished_at BIGINT NOT NULL,
    elapsed_ms BIGINT NOT NULL,
    worker TEXT NOT NULL
);
CREATE INDEX courier_task_index_finished ON courier_task_index (finished_at);
CREATE INDEX courier_task_index_name ON courier_task_index (task_name, finished_at);

-- Searchable values: each scalar keyword argument (name = the field, such as
-- `chat_id`) and each label (name = `label.<key>`), secret fields excluded.
CREATE TABLE courier_task_keys (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    task_id TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    PRIMARY KEY (name, value, task_id)
);
CREATE INDEX courier_task_keys_recent ON courier_task_keys (name, value, finished_at);
