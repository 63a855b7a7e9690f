-- holdfast schema, SQLite dialect (migrations/postgres holds the same shape for PostgreSQL).
-- Embedded in the aggregator binary (sqlx::migrate!) and applied at start. Never edit a
-- migration that has shipped: add a new file instead (sqlx checks the checksums).
-- Timestamps are TEXT, ISO-8601 in UTC with milliseconds: 2025-01-31T12:34:56.789Z.

-- Provisioned gateways. `id` is the gateway's number in session keys (>= 1; 0 means a phone
-- connected straight to the aggregator). AUTOINCREMENT: a removed gateway's number is never
-- handed out again, so its sessions cannot be mistaken for a new gateway's.
CREATE TABLE gateways (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    secret     BLOB    NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen  TEXT
);

-- One row per phone session, written by the aggregators' flushes. No foreign key to gateways:
-- direct phones use gateway_id 0, and a removed gateway's sessions stay counted.
-- boot_epoch and session_id hold u64 values as the same bit pattern (i64).
CREATE TABLE sessions (
    gateway_id   INTEGER NOT NULL,
    boot_epoch   INTEGER NOT NULL,
    session_id   INTEGER NOT NULL,
    device       TEXT,
    opened_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    closed_at    TEXT,
    close_reason INTEGER,
    bytes        INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    last_byte_at TEXT,
    PRIMARY KEY (gateway_id, boot_epoch, session_id)
) WITHOUT ROWID;

CREATE INDEX sessions_device ON sessions (device);

-- Per-device totals, computed from sessions on every read: exact by construction.
CREATE VIEW device_totals AS
SELECT device,
       sum(bytes)        AS bytes,
       count(*)          AS sessions,
       max(last_byte_at) AS last_byte_at
FROM sessions
WHERE device IS NOT NULL
GROUP BY device;
