-- What the heartbeat task writes: one row per task id, with when it ran
-- (the worker's clock, Unix milliseconds) and how many times. Portable SQL.
CREATE TABLE IF NOT EXISTS heartbeats (
    task_id   TEXT   PRIMARY KEY,
    ran_at_ms BIGINT NOT NULL,
    note      TEXT   NOT NULL,
    runs      BIGINT NOT NULL
);
