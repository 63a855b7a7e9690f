-- HOLDFAST_FAULT=fold-loses (a check of the checks, scripts/fault-checks.sh): folding deletes a
-- finished boot's sessions but what they counted never reaches `device_folded` (a BEFORE
-- trigger returning NULL drops the insert and the update). Every run verifies exact, since a
-- run is verified before its sessions are folded; only a check of the devices after folding
-- (`lab bench fold`'s last step) can see the bytes that vanished, and must.
CREATE OR REPLACE FUNCTION holdfast_fault_drop_row() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RETURN NULL; END $$;
DROP TRIGGER IF EXISTS holdfast_fault_fold_loses ON device_folded;
CREATE TRIGGER holdfast_fault_fold_loses BEFORE INSERT OR UPDATE ON device_folded
  FOR EACH ROW EXECUTE FUNCTION holdfast_fault_drop_row();
