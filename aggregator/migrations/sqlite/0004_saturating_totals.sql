-- Per-device totals that saturate instead of failing (issue #12, M1): SQLite's sum() raises
-- "integer overflow" when a device's sessions add up beyond the integer maximum, and one gateway
-- reporting such totals made /api/devices and the dashboard fail for everyone. total() adds as
-- doubles: exact while a device's total is below 2^53 bytes (9 PB; one byte a millisecond for
-- 285,000 years), approximate above it, and then capped at the integer maximum like Postgres's
-- LEAST(sum(bytes::numeric), ...) in migrations/postgres/0003_fold.sql.
DROP VIEW device_totals;
CREATE VIEW device_totals AS
SELECT device,
       CAST(min(total(bytes), 9223372036854775807.0) AS INTEGER) AS bytes,
       sum(sessions)                                               AS sessions,
       max(last_byte_at)                                           AS last_byte_at
FROM (
    SELECT device, bytes, 1 AS sessions, last_byte_at FROM sessions WHERE device IS NOT NULL
    UNION ALL
    SELECT device, bytes, sessions, last_byte_at FROM device_folded
)
GROUP BY device;
