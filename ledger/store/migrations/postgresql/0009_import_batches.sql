-- Bulk-imported suppressions name the import batch whose ledger event records them (the seq of
-- that event on the scope's import-batch chain; see ledger/import_batch.py). NULL for every
-- other suppression. No index: only `ledger verify` reads it, in one scan.
ALTER TABLE suppressions ADD COLUMN batch BIGINT;
