-- Cross-process cache invalidation on SQLite needs no schema: each process polls
-- PRAGMA data_version, which changes whenever another connection commits (see
-- ledger/store/changes.py). This file keeps the migration numbers of both dialects aligned.
SELECT 1;
