-- The consent ledger: clients, subjects, relationships, suppressions, the hash-chained consent
-- events, campaigns, interaction events and the delivery outbox. Times are integer microseconds
-- since the epoch (UTC). No column holds an IP address or a user agent, by design.
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    num INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL,
    domains TEXT NOT NULL DEFAULT '[]',
    postal_address TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL,
    on_suppressed TEXT NOT NULL,
    tracking INTEGER NOT NULL DEFAULT 1,
    password_hash TEXT NOT NULL,
    dkim_selector TEXT NOT NULL DEFAULT '',
    dkim_private_key TEXT NOT NULL DEFAULT '',
    trusted_networks TEXT NOT NULL DEFAULT '[]',
    paused_reason TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE TABLE subjects (
    subject_key BLOB PRIMARY KEY,
    address TEXT,
    name TEXT,
    restricted INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE relationships (
    client_id TEXT NOT NULL,
    subject_key BLOB NOT NULL,
    status TEXT,
    consent_at INTEGER,
    first_sent_at INTEGER,
    last_sent_at INTEGER,
    last_engagement_at INTEGER,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, subject_key)
) WITHOUT ROWID;
CREATE TABLE suppressions (
    subject_key BLOB NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    since INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (subject_key, scope)
) WITHOUT ROWID;
CREATE TABLE ledger_events (
    id INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    subject_key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL DEFAULT '',
    notice_version TEXT NOT NULL DEFAULT '',
    legal_basis TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (client_id, subject_key, seq)
);
CREATE TABLE ledger_chains (
    client_id TEXT NOT NULL,
    subject_key BLOB NOT NULL,
    base_seq INTEGER NOT NULL,
    base_hash BLOB NOT NULL,
    head_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    PRIMARY KEY (client_id, subject_key)
) WITHOUT ROWID;
CREATE TABLE campaigns (
    num INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (client_id, name)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    campaign_num INTEGER,
    subject_key BLOB,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    link_id TEXT NOT NULL DEFAULT '',
    country TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL
);
CREATE INDEX events_subject ON events (subject_key);
CREATE INDEX events_campaign ON events (campaign_num, kind);
CREATE INDEX events_at ON events (at);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    campaign_num INTEGER,
    subject_key BLOB,
    mail_from TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    message BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox (next_attempt_at);
