-- Inbound mail (issue 5): soft-bounce scores, the complaint-rate guard's window, and an index
-- for counting a client's delivered copies and complaints by time.
CREATE TABLE soft_bounces (
    client_id TEXT NOT NULL,
    subject_key BLOB NOT NULL,
    campaign_num INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (client_id, subject_key, campaign_num)
) WITHOUT ROWID;
CREATE TABLE complaint_guard (
    client_id TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_client_kind_at ON events (client_id, kind, at);
