-- The task index with fewer B-trees: each one costs PostgreSQL about a
-- fifth of a row's insert (BENCHMARKS.md, "Session 11: a B-tree less").
--
-- One index on (finished_at, task_name, status) replaces (finished_at) and
-- (task_name, finished_at): it gives newest-first pages, and the name and
-- status filters are checked in the index as it is read, not in the rows.
DROP INDEX courier_task_index_finished;
DROP INDEX courier_task_index_name;
CREATE INDEX courier_task_index_recent ON courier_task_index (finished_at, task_name, status);

-- A key row keeps one index, unique over the whole row, in place of a primary
-- key on (name, value, task_id) beside (name, value, finished_at). A task
-- indexed again leaves its old key rows behind: a search joins a key row
-- only to the task row with the same finished_at, and retention deletes them.
-- SQLite cannot drop a primary key, so the table is made again. It is renamed
-- first: on PostgreSQL that waits for the writers of the moment and keeps
-- the others out until this commits, so the copy misses no row a worker
-- wrote meanwhile. Upgrade every worker together: an older worker's batch
-- that meets a task indexed before (`ON CONFLICT (name, value, task_id)`)
-- fails on the new table, and is logged and dropped.
ALTER TABLE courier_task_keys RENAME TO courier_task_keys_before;
CREATE TABLE courier_task_keys (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    task_id TEXT NOT NULL,
    finished_at BIGINT NOT NULL
);
INSERT INTO courier_task_keys (name, value, task_id, finished_at)
    SELECT name, value, task_id, finished_at FROM courier_task_keys_before;
DROP TABLE courier_task_keys_before;
CREATE UNIQUE INDEX courier_task_keys_recent ON courier_task_keys (name, value, finished_at, task_id);
