-- Folding (same shape as migrations/postgres/0003_fold.sql, which explains the rules): finished
-- sessions leave `sessions` for per-device totals. SQLite has one writer at a time, so a flush's
-- check of `folded_epochs` and its writes are never interleaved with a fold.
CREATE TABLE device_folded (
    device       TEXT    PRIMARY KEY,
    bytes        INTEGER NOT NULL CHECK (bytes >= 0),
    sessions     INTEGER NOT NULL CHECK (sessions >= 0),
    last_byte_at TEXT
);

CREATE TABLE gateway_boots (
    gateway_id INTEGER NOT NULL,
    boot_epoch INTEGER NOT NULL,
    first_seen TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (gateway_id, boot_epoch)
) WITHOUT ROWID;

CREATE TABLE folded_epochs (
    gateway_id INTEGER NOT NULL,
    boot_epoch INTEGER NOT NULL,
    folded_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    PRIMARY KEY (gateway_id, boot_epoch)
) WITHOUT ROWID;

CREATE INDEX sessions_closed_direct ON sessions (closed_at)
    WHERE gateway_id = 0 AND closed_at IS NOT NULL;

DROP VIEW device_totals;
CREATE VIEW device_totals AS
SELECT device,
       sum(bytes)        AS bytes,
       sum(sessions)     AS sessions,
       max(last_byte_at) AS last_byte_at
FROM (
    SELECT device, bytes, 1 AS sessions, last_byte_at FROM sessions WHERE device IS NOT NULL
    UNION ALL
    SELECT device, bytes, sessions, last_byte_at FROM device_folded
)
GROUP BY device;
