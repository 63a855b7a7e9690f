#!/usr/bin/env python3
"""A WebSocket server, written independently of mobile-sim, that counts what phones send.

It stands in for a gateway or the aggregator in mobile-sim's tests:

- every payload byte of every binary or text message counts, per device (the ``?device=`` query
  parameter of the upgrade request);
- received bytes are "committed" in batches every ``--commit-ms`` (to an SQLite database with
  ``--sqlite``, table ``device_totals(device, bytes)``; in memory otherwise), and after each
  commit every connection that sent something is told ``{"durable":N}``, N being the bytes of
  that connection the commits hold;
- ``GET /api/devices?prefix=P`` answers ``{"devices":[{"device":..,"bytes":..}]}`` with the
  committed totals (the aggregator's verification endpoint format);
- on SIGTERM it prints ``{"received": {device: bytes}, "committed": {device: bytes}}`` on one
  line of stdout and exits.

The first line on stdout is ``PORT <n>`` once it listens. Faults, for testing that mobile-sim's
verdict catches each: ``--fault lose`` confirms bytes it then does not persist for one device,
``--fault double`` persists one byte too many for one device, ``--fault never-confirm`` persists
everything and confirms nothing, ``--fault persist-nothing`` confirms everything and persists
nothing.

Needs the ``websockets`` package, 10.4 or newer: ``python3 -m pip install websockets``, or on
Debian 12 ``apt-get install python3-websockets``. Both its asyncio API (13 and newer) and its
legacy API (older) are supported.
"""

import argparse
import asyncio
import http
import json
import signal
import sqlite3
import ssl
import sys
from collections import defaultdict
from urllib.parse import parse_qs, urlparse

try:  # websockets 13 and newer
    from websockets.asyncio.server import serve

    NEW_API = True
except ImportError:  # websockets 10 to 12 (Debian 12 has 10.4)
    from websockets import serve

    NEW_API = False


class Conn:
    __slots__ = ("ws", "device", "count")

    def __init__(self, ws, device):
        self.ws = ws
        self.device = device
        self.count = 0


class State:
    def __init__(self, args):
        self.args = args
        self.received = defaultdict(int)
        self.committed = defaultdict(int)
        self.pending = defaultdict(int)
        self.dirty = set()
        self.faulted = False
        self.db = None
        if args.sqlite:
            self.db = sqlite3.connect(args.sqlite)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS device_totals (device TEXT PRIMARY KEY, bytes INTEGER NOT NULL)"
            )
            self.db.commit()

    def persist(self, batch):
        rows = dict(batch)
        if self.args.fault == "persist-nothing":
            return
        if self.args.fault and not self.faulted and rows:
            victim = sorted(rows)[0]
            self.faulted = True
            if self.args.fault == "lose":
                rows[victim] -= 1  # confirmed below, but not persisted
            elif self.args.fault == "double":
                rows[victim] += 1  # persisted, never sent
        for device, n in rows.items():
            self.committed[device] += n
        if self.db is not None:
            self.db.executemany(
                "INSERT INTO device_totals (device, bytes) VALUES (?, ?) "
                "ON CONFLICT(device) DO UPDATE SET bytes = bytes + excluded.bytes",
                list(rows.items()),
            )
            self.db.commit()


async def handler(ws, state):
    path = ws.request.path if NEW_API else ws.path
    query = parse_qs(urlparse(path).query)
    conn = Conn(ws, query.get("device", [""])[0])
    try:
        async for message in ws:
            n = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
            state.received[conn.device] += n
            state.pending[conn.device] += n
            conn.count += n
            state.dirty.add(conn)
            if state.args.commit_ms == 0:
                await commit(state)
    except Exception:
        pass
    finally:
        # Whatever it sent stays pending for the next commit; it can no longer be told.
        state.dirty.discard(conn)


async def commit(state):
    if not state.pending:
        return
    batch, state.pending = state.pending, defaultdict(int)
    told = [(c, c.count) for c in state.dirty]
    state.dirty = set()
    state.persist(batch)
    if state.args.fault == "never-confirm":
        return
    for conn, n in told:
        try:
            await conn.ws.send(json.dumps({"durable": n}))
        except Exception:
            pass


async def committer(state):
    while True:
        await asyncio.sleep(state.args.commit_ms / 1000.0)
        await commit(state)


def totals_json(state, path):
    """The committed totals as the aggregator's /api/devices answers them, or None."""
    url = urlparse(path)
    if url.path not in ("/api/devices", "/totals"):
        return None
    prefix = parse_qs(url.query).get("prefix", [""])[0]
    devices = [{"device": d, "bytes": b} for d, b in sorted(state.committed.items()) if d.startswith(prefix)]
    return json.dumps({"devices": devices})


def process_request(state):
    if NEW_API:

        def process(connection, request):
            body = totals_json(state, request.path)
            return None if body is None else connection.respond(200, body)

    else:

        async def process(path, request_headers):
            body = totals_json(state, path)
            if body is None:
                return None
            return (http.HTTPStatus.OK, [("Content-Type", "application/json")], body.encode())

    return process


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--sqlite")
    parser.add_argument("--commit-ms", type=int, default=20)
    parser.add_argument("--fault", choices=["lose", "double", "never-confirm", "persist-nothing"])
    args = parser.parse_args()

    state = State(args)
    tls = None
    if args.certfile:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.load_cert_chain(args.certfile, args.keyfile)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    async def on_connection(ws, path=None):
        await handler(ws, state)

    async with serve(
        on_connection,
        args.host,
        args.port,
        ssl=tls,
        reuse_port=args.reuse_port,
        backlog=4096,
        process_request=process_request(state),
        compression=None,
        max_size=1 << 16,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        task = None
        if args.commit_ms > 0:
            task = asyncio.create_task(committer(state))
        await stop
        if task:
            task.cancel()
        await commit(state)
        print(json.dumps({"received": state.received, "committed": state.committed}), flush=True)
        sys.stdout.flush()
        # Do not wait for thousands of closing handshakes.
        import os

        os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
