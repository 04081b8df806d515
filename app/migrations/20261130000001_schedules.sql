-- Cron schedules (courier::schedule). Portable SQL: the same file runs on
-- PostgreSQL and SQLite. Times are Unix seconds.

-- One row per schedule that was ever kept by a worker or paused: whether it
-- is paused (what every worker's clock reads before it publishes a tick),
-- and the last tick published (what `missed = "once"` starts from).
CREATE TABLE courier_schedules (
    name TEXT PRIMARY KEY,
    paused BIGINT NOT NULL DEFAULT 0,
    last_tick BIGINT,
    updated_at BIGINT NOT NULL
);
