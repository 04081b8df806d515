-- The task index with fewer B-trees: each one costs the database about a
-- fifth of a row's insert (BENCHMARKS.md, "one B-tree less").
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
-- (SQLite cannot drop a primary key: the table is made again.)
CREATE TABLE courier_task_keys_next (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    task_id TEXT NOT NULL,
    finished_at BIGINT NOT NULL
);
INSERT INTO courier_task_keys_next (name, value, task_id, finished_at)
    SELECT name, value, task_id, finished_at FROM courier_task_keys;
DROP TABLE courier_task_keys;
ALTER TABLE courier_task_keys_next RENAME TO courier_task_keys;
CREATE UNIQUE INDEX courier_task_keys_recent ON courier_task_keys (name, value, finished_at, task_id);
