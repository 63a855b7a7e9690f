-- HOLDFAST_FAULT=fail-reads (a check of the checks, scripts/fault-checks.sh): the totals view is
-- renamed away, so every reader of the totals (mobile-sim's verification, /api/devices, the
-- drills' queries) gets an error and must say it could not verify.
ALTER VIEW device_totals RENAME TO device_totals_hidden_by_fault;
