-- The journal: a flush appends what it reports as one row, and is acknowledged when that row
-- commits; the compactor later merges the journal into `sessions` (docs/ARCHITECTURE.md, "The
-- journal"). Appending a flight of 50,000 reports is one tuple and a few hundred kilobytes of
-- WAL, where upserting them is 50,000 index lookups and row versions: the upserts still happen,
-- but off the path of the acknowledgement, and a session reported in many flights before a
-- compaction is upserted once. Every reader of counts (device_totals below, the aggregator's
-- session lookup) merges the journal in, so a count is visible the moment it is acknowledged.
--
-- One row per committed flight, in the order their inserts ran (`id`). The arrays are parallel:
-- entry k of each is one report (gateway, boot epoch, session, device or NULL, cumulative count,
-- close reason or NULL), the same values the flush used to upsert.
CREATE TABLE journal (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    written_at    timestamptz NOT NULL DEFAULT now(),
    entries       integer     NOT NULL CHECK (entries > 0),
    gateway_ids   integer[]   NOT NULL,
    boot_epochs   bigint[]    NOT NULL,
    session_ids   bigint[]    NOT NULL,
    devices       text[]      NOT NULL,
    totals        bigint[]    NOT NULL,
    close_reasons smallint[]  NOT NULL
);
-- Large arrays go out of line uncompressed: compressing them would cost the flush CPU to save
-- disk that the compactor frees within a second anyway.
ALTER TABLE journal
    ALTER COLUMN gateway_ids SET STORAGE EXTERNAL,
    ALTER COLUMN boot_epochs SET STORAGE EXTERNAL,
    ALTER COLUMN session_ids SET STORAGE EXTERNAL,
    ALTER COLUMN devices SET STORAGE EXTERNAL,
    ALTER COLUMN totals SET STORAGE EXTERNAL,
    ALTER COLUMN close_reasons SET STORAGE EXTERNAL;

-- The journal's reports one per row.
CREATE VIEW journal_entries AS
SELECT j.id, j.written_at, u.gateway_id, u.boot_epoch, u.session_id, u.device, u.bytes, u.close_reason
FROM journal j,
     unnest(j.gateway_ids, j.boot_epochs, j.session_ids, j.devices, j.totals, j.close_reasons)
         AS u(gateway_id, boot_epoch, session_id, device, bytes, close_reason);

-- Every session as readers must see it: its row merged with its reports still in the journal
-- (the larger count, the first device id, the first close), as the next compaction will merge
-- them. Scripts and queries that look at sessions read this, not the table.
CREATE VIEW sessions_now AS
WITH pending AS (
    SELECT gateway_id, boot_epoch, session_id,
           (array_agg(device ORDER BY id) FILTER (WHERE device IS NOT NULL))[1]             AS device,
           max(bytes)                                                                        AS bytes,
           max(written_at)                                                                   AS written_at,
           (array_agg(close_reason ORDER BY id) FILTER (WHERE close_reason IS NOT NULL))[1] AS close_reason
    FROM journal_entries
    GROUP BY gateway_id, boot_epoch, session_id
)
SELECT gateway_id, boot_epoch, session_id,
       COALESCE(s.device, p.device)                                          AS device,
       GREATEST(s.bytes, p.bytes)                                            AS bytes, -- skips NULLs
       CASE WHEN s.closed_at IS NOT NULL THEN s.close_reason ELSE p.close_reason END AS close_reason,
       CASE WHEN p.bytes > COALESCE(s.bytes, 0) THEN p.written_at ELSE s.last_byte_at END AS last_byte_at
FROM sessions s
FULL JOIN pending p USING (gateway_id, boot_epoch, session_id);

-- Per-device totals: every session as readers see it, plus what was folded. Same columns as
-- before.
CREATE OR REPLACE VIEW device_totals AS
SELECT device,
       LEAST(sum(bytes::numeric), 9223372036854775807)::bigint AS bytes,
       sum(sessions)::bigint                                   AS sessions,
       max(last_byte_at)                                       AS last_byte_at
FROM (
    SELECT device, bytes, 1::bigint AS sessions, last_byte_at FROM sessions_now WHERE device IS NOT NULL
    UNION ALL
    SELECT device, bytes, sessions, last_byte_at FROM device_folded
) AS parts
GROUP BY device;
