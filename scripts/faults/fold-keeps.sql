-- HOLDFAST_FAULT=fold-keeps (a check of the checks, scripts/fault-checks.sh): no session row is
-- ever deleted (a BEFORE DELETE trigger returning NULL), so folding finds nothing it removed and
-- adds nothing: every count stays exact, and the sessions table grows with every run. Only a
-- check of the table's size (`lab bench fold`'s bound) can see it, and must.
CREATE OR REPLACE FUNCTION holdfast_fault_drop_row() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RETURN NULL; END $$;
DROP TRIGGER IF EXISTS holdfast_fault_fold_keeps ON sessions;
CREATE TRIGGER holdfast_fault_fold_keeps BEFORE DELETE ON sessions
  FOR EACH ROW EXECUTE FUNCTION holdfast_fault_drop_row();
