-- Broadcast campaigns (courier::campaign). Portable SQL: the same file runs
-- on PostgreSQL and SQLite. Times are Unix seconds.

CREATE TABLE courier_campaigns (
    id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    -- The shared arguments, a JSON object; each recipient's chat_id is added.
    kwargs TEXT NOT NULL,
    lane TEXT NOT NULL,
    -- draft (importing), running, paused, cancelled, done
    status TEXT NOT NULL,
    -- A task run once per dead chat (blocked, deactivated, kicked, not found).
    follow_up TEXT,
    -- 1 once every recipient is imported (counters are final from then on).
    imported BIGINT NOT NULL DEFAULT 0,
    -- Bumped by each resume: republished messages need message ids the
    -- stream has not seen (the parked ones were acknowledged and removed).
    generation BIGINT NOT NULL DEFAULT 0,
    -- The page being published (seq range; 0, 0: none): the fan-out marks
    -- a page queued and records it here in one transaction, publishes it,
    -- then clears it. A restarted fan-out publishes that page's queued rows
    -- again, under the same ids (the stream drops what it has).
    publishing_first BIGINT NOT NULL DEFAULT 0,
    publishing_last BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);

CREATE TABLE courier_campaign_recipients (
    campaign_id TEXT NOT NULL,
    -- The recipient's position in the source (1-based): a re-run import
    -- numbers them the same, so it adds nothing twice.
    seq BIGINT NOT NULL,
    chat_id BIGINT NOT NULL,
    -- pending (not in the stream), queued (in the stream), parked (taken
    -- out by a pause), sent, blocked, deactivated, kicked, not_found,
    -- failed, cancelled
    status TEXT NOT NULL,
    -- The generation of the one message that stands for this row: its
    -- Nats-Msg-Id is <campaign>:<chat_id>~g<generation>; any other copy
    -- (from before a pause) is dropped by the workers.
    generation BIGINT NOT NULL DEFAULT 0,
    message_id BIGINT,
    reason TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, seq)
);

CREATE UNIQUE INDEX courier_campaign_recipients_chat ON courier_campaign_recipients (campaign_id, chat_id);
CREATE INDEX courier_campaign_recipients_status ON courier_campaign_recipients (campaign_id, status, seq);
