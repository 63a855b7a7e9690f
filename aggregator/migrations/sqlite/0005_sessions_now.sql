-- Every session as readers must see it. PostgreSQL's view of the same name merges the sessions
-- table with its journal (migrations/postgres/0004_journal.sql); SQLite writes sessions at once,
-- so here it is the table. Scripts that look at sessions read this view in either database.
CREATE VIEW sessions_now AS
SELECT gateway_id, boot_epoch, session_id, device, bytes, close_reason, last_byte_at FROM sessions;
