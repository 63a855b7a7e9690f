-- Persisted totals without scanning `sessions` (same shape as migrations/postgres/0002): every
-- flush adds what it added to a shard row of `totals` in its own transaction; `prev_bytes` lets
-- a write say by how much the stored count grew.
ALTER TABLE sessions ADD COLUMN prev_bytes INTEGER NOT NULL DEFAULT 0;

CREATE TABLE totals (
    shard    INTEGER PRIMARY KEY,
    sessions INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);

WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < 15)
INSERT INTO totals (shard, sessions, bytes)
SELECT n,
       CASE WHEN n = 0 THEN (SELECT count(*) FROM sessions) ELSE 0 END,
       CASE WHEN n = 0 THEN (SELECT min(COALESCE(total(bytes), 0), 9223372036854775807) FROM sessions) ELSE 0 END
FROM g;
