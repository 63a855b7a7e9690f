-- HOLDFAST_FAULT=drop-writes (a check of the checks, scripts/fault-checks.sh): every write to
-- `sessions` is silently dropped by a BEFORE trigger returning NULL. Commits succeed, phones are
-- told their bytes are durable, nothing is persisted: every verification must fail.
CREATE OR REPLACE FUNCTION holdfast_fault_drop_row() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RETURN NULL; END $$;
DROP TRIGGER IF EXISTS holdfast_fault_drop_writes ON sessions;
CREATE TRIGGER holdfast_fault_drop_writes BEFORE INSERT OR UPDATE ON sessions
  FOR EACH ROW EXECUTE FUNCTION holdfast_fault_drop_row();
