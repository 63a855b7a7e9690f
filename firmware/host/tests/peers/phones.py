#!/usr/bin/env python3
"""Phones written with Python's `websockets`, independently of this project's code.

Each of N phones connects to BASE/ws?device=PREFIX-i, sends its bytes as a mix of one-byte
binary messages, one-byte text messages and fragmented messages, pings with a 125-byte payload
(the largest a control frame may carry: more than a board's phone send buffer, so the pong is
echoed in pieces) and waits for the pong, then waits until the gateway says {"durable": n} with n
equal to everything it sent. Each phone's device token, if the environment's PHONE_TOKENS (a JSON
object, device id to token) has one, goes with it (`&token=T`). Prints one JSON line
{"sent": {device: bytes}} and exits 0, or exits 1 if a phone was not told all its bytes durable
within the timeout.
"""
import asyncio
import json
import os
import sys

import websockets


TOKENS = json.loads(os.environ.get("PHONE_TOKENS") or "{}")


async def phone(base, device, n, timeout):
    sent = 0
    token = f"&token={TOKENS[device]}" if device in TOKENS else ""
    async with websockets.connect(f"{base}/ws?device={device}{token}", max_size=None) as ws:
        k = 0
        while sent < n:
            kind = k % 3
            if kind == 0:
                await ws.send(b"\x01")
                sent += 1
            elif kind == 1:
                await ws.send("a")
                sent += 1
            else:
                take = min(3, n - sent)
                await ws.send([b"\x02"] * take)  # a fragmented message, one byte per fragment
                sent += take
            k += 1
        # websockets resolves the waiter only for a pong that echoes this payload exactly.
        pong = await ws.ping(bytes(range(125)))
        await asyncio.wait_for(pong, timeout)
        durable = 0
        while durable < sent:
            message = await asyncio.wait_for(ws.recv(), timeout)
            durable = json.loads(message)["durable"]
        return device, sent


async def main():
    base, prefix, phones, each = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
    results = await asyncio.gather(*(phone(base, f"{prefix}-{i}", each + i, timeout) for i in range(phones)))
    print(json.dumps({"sent": dict(results)}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - any failure is the verdict
        print(f"phones failed: {e!r}", file=sys.stderr)
        sys.exit(1)
