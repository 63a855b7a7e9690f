-- Persisted totals without scanning `sessions`: every flush adds, in its own transaction, what it
-- added (new sessions, and bytes by which stored counts grew), to one of 16 shard rows chosen at
-- random, so that concurrent flushes (and aggregators) rarely wait for each other. The totals are
-- the sum of the shards. Exact by construction: a flush's additions commit with its rows or not
-- at all, and a replay (a count that is not larger than the stored one) adds nothing.
--
-- `prev_bytes`: the count a session had before its latest write, set by every write, so that the
-- write itself can say by how much the count grew (RETURNING bytes - prev_bytes), even when two
-- aggregators write the same session: each sees the row as it locked it. Not indexed, so the
-- update stays HOT.
ALTER TABLE sessions ADD COLUMN prev_bytes bigint NOT NULL DEFAULT 0;

CREATE TABLE totals (
    shard    smallint PRIMARY KEY,
    sessions bigint   NOT NULL,
    bytes    bigint   NOT NULL
);

-- What was stored before this migration goes into shard 0.
INSERT INTO totals (shard, sessions, bytes)
SELECT g,
       CASE WHEN g = 0 THEN (SELECT count(*) FROM sessions) ELSE 0 END,
       CASE WHEN g = 0 THEN (SELECT LEAST(COALESCE(sum(bytes::numeric), 0), 9223372036854775807)::bigint FROM sessions) ELSE 0 END
FROM generate_series(0, 15) AS g;
