-- holdfast schema, PostgreSQL dialect (migrations/sqlite holds the same shape for SQLite).
-- Embedded in the aggregator binary (sqlx::migrate!) and applied at start. Never edit a
-- migration that has shipped: add a new file instead (sqlx checks the checksums).

-- Provisioned gateways. `id` is the gateway's number in session keys (>= 1; 0 means a phone
-- connected straight to the aggregator). A serial never hands out a number twice, so a removed
-- gateway's sessions cannot be mistaken for a new gateway's.
CREATE TABLE gateways (
    id         serial      PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    secret     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz
);

-- One row per phone session, written by the aggregators' flushes. No foreign key to gateways:
-- direct phones use gateway_id 0, and a removed gateway's sessions stay counted.
-- boot_epoch and session_id hold u64 values as the same bit pattern (i64).
CREATE TABLE sessions (
    gateway_id   integer     NOT NULL,
    boot_epoch   bigint      NOT NULL,
    session_id   bigint      NOT NULL,
    device       text,
    opened_at    timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    close_reason smallint,
    bytes        bigint      NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    last_byte_at timestamptz,
    PRIMARY KEY (gateway_id, boot_epoch, session_id)
) WITH (fillfactor = 90); -- room on each page for HOT updates of the counts

CREATE INDEX sessions_device ON sessions (device);

-- Per-device totals, computed from sessions on every read: exact by construction (two
-- aggregators writing the same session concurrently cannot count it twice).
CREATE VIEW device_totals AS
SELECT device,
       sum(bytes)::bigint AS bytes,
       count(*)           AS sessions,
       max(last_byte_at)  AS last_byte_at
FROM sessions
WHERE device IS NOT NULL
GROUP BY device;
