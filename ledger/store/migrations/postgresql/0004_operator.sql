-- Operator tools (issue 6): hashed suppression lists, campaign aggregates that outlive the purge
-- of interaction events, and indexes the purge walks.
--
-- Hashed lists as other providers export them: a digest of the lower-cased address, never the
-- address itself. Looked up at RCPT time by digest (both algorithms), hence digest first.
CREATE TABLE hashed_suppressions (
    digest BYTEA NOT NULL,
    algo TEXT NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    since BIGINT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (digest, algo, scope)
);
-- Counts of purged (or erased) interaction events per campaign, day, kind, reason, link and
-- country: what a campaign report still shows once the events themselves are gone.
CREATE TABLE campaign_stats (
    client_id TEXT NOT NULL,
    campaign_num BIGINT NOT NULL,
    day BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    link_id TEXT NOT NULL,
    country TEXT NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (campaign_num, client_id, day, kind, reason, link_id, country)
);
-- Distinct recipients among purged events per campaign, kind and link (unique opens/clicks and
-- accepted recipients), summed per purge batch: an upper bound once a campaign is partly purged.
CREATE TABLE campaign_uniques (
    client_id TEXT NOT NULL,
    campaign_num BIGINT NOT NULL,
    kind TEXT NOT NULL,
    link_id TEXT NOT NULL,
    subjects BIGINT NOT NULL,
    PRIMARY KEY (campaign_num, client_id, kind, link_id)
);
CREATE INDEX outbox_created ON outbox (created_at);
