-- Folding: finished sessions leave `sessions` for per-device totals, so that the hot table holds
-- the live sessions and a recent margin, not one row per phone connection ever made
-- (docs/ARCHITECTURE.md, "Folding"). The aggregator's compactor does it; nothing here runs it.
--
-- Which sessions can be folded: a session's row may be deleted only once no write for it can
-- ever come again, because a write after the delete would insert the row anew with the
-- session's whole cumulative count (counted twice).
-- - A direct phone's session (gateway_id 0) is written only by the aggregator process that holds
--   the phone; once its close is committed, nothing writes it again.
-- - A gateway's sessions of a boot that a newer boot of the same gateway superseded: the old
--   process is gone. Late writes (a report that waited in some aggregator's ledger) are refused
--   from the moment the boot is marked in `folded_epochs`: a flush checks the mark under a shared
--   advisory lock that the fold takes exclusively, so no write slips between mark and delete.

-- What folded sessions added, per device. Rows of sessions without a device id are dropped:
-- they count in `totals` (sessions, bytes) but belong to no device.
CREATE TABLE device_folded (
    device       text        PRIMARY KEY,
    bytes        bigint      NOT NULL CHECK (bytes >= 0),
    sessions     bigint      NOT NULL CHECK (sessions >= 0),
    last_byte_at timestamptz
);

-- Every gateway boot an aggregator accepted a trunk from, and when it was first seen: a boot is
-- superseded once a later one of the same gateway has been seen for the fold grace period.
CREATE TABLE gateway_boots (
    gateway_id integer     NOT NULL,
    boot_epoch bigint      NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, boot_epoch)
);

-- Boots whose sessions are (being) folded: no write for them is accepted any more, and a trunk
-- from such a boot is refused. One row per gateway boot.
CREATE TABLE folded_epochs (
    gateway_id integer     NOT NULL,
    boot_epoch bigint      NOT NULL,
    folded_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when the fold found no row of the boot left: nothing more to do for it.
    finished_at timestamptz,
    PRIMARY KEY (gateway_id, boot_epoch)
);

-- Finds closed direct sessions without a scan. The close is the one update of a session that is
-- not HOT (closed_at is in this index's predicate); counts stay HOT.
CREATE INDEX sessions_closed_direct ON sessions (closed_at)
    WHERE gateway_id = 0 AND closed_at IS NOT NULL;

-- Per-device totals: the live rows plus what was folded. The same columns as before; the byte
-- sum saturates at the bigint maximum instead of failing the query for everyone.
CREATE OR REPLACE VIEW device_totals AS
SELECT device,
       LEAST(sum(bytes::numeric), 9223372036854775807)::bigint AS bytes,
       sum(sessions)::bigint                                   AS sessions,
       max(last_byte_at)                                       AS last_byte_at
FROM (
    SELECT device, bytes, 1::bigint AS sessions, last_byte_at FROM sessions WHERE device IS NOT NULL
    UNION ALL
    SELECT device, bytes, sessions, last_byte_at FROM device_folded
) AS parts
GROUP BY device;
