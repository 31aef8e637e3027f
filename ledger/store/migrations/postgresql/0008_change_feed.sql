-- Cross-node cache invalidation: every change to what the RCPT decision reads NOTIFYs the
-- channel consentgate_changes with the table's name. Statement-level triggers (one notification
-- per statement, and PostgreSQL folds identical ones within a transaction), so a bulk import
-- costs one notification, not one per row. Nodes LISTEN (ledger/store/changes.py).
CREATE OR REPLACE FUNCTION consentgate_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('consentgate_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
CREATE TRIGGER suppressions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
CREATE TRIGGER hashed_suppressions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON hashed_suppressions FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
-- Subjects and relationships are written on every delivery (first/last sent): only the columns
-- a decision reads, and deletions (erasure, purge), notify.
CREATE TRIGGER subjects_changed AFTER UPDATE OF restricted OR DELETE OR TRUNCATE ON subjects
    FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
CREATE TRIGGER relationships_changed AFTER UPDATE OF status, consent_at OR DELETE OR TRUNCATE
    ON relationships FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
-- Every consent, opt-out, restriction or expiry also appends to the consent ledger: this catches
-- a first opt-in, which inserts its relationship row (inserts there are mostly deliveries).
CREATE TRIGGER ledger_events_changed AFTER INSERT ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION consentgate_notify_change();
