-- Bearer keys of the admin HTTP API (/api/v1). Only the SHA-256 of each key's secret is kept;
-- client_id NULL is an operator key. Revoked keys stay (revoked_at set) so an audit can name them.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    client_id TEXT REFERENCES clients (id),
    label TEXT NOT NULL DEFAULT '',
    secret_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_client ON api_keys (client_id);
