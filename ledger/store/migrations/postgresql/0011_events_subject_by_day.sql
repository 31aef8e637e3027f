-- Issue 9: the events' subject index bucketed by day (ledger/store/event_subjects.py says why).
-- The retention purge deletes events oldest first; a plain subject index made every deleted row
-- dirty a random page of an index as large as the table.
DROP INDEX events_subject;
CREATE INDEX events_subject_day ON events ((at / 86400000000), subject_key);
