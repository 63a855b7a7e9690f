#!/usr/bin/env python3
"""A TCP relay whose connections can be cut one at a time, for scripts/drills.sh (trunk-cut) on
kernels where `ss -K` cannot destroy a socket (no CONFIG_INET_DIAG_DESTROY).

    tcp-relay.py LISTEN_PORT TARGET_HOST TARGET_PORT

Listens on 127.0.0.1:LISTEN_PORT and relays every connection to TARGET_HOST:TARGET_PORT, byte
for byte (TLS passes through untouched). SIGUSR1 cuts the oldest open connection: both sockets
are closed with a reset (SO_LINGER 0), as when a network path dies abruptly. Prints "listening"
once ready and one line per cut. Stops on SIGTERM or SIGINT.
"""

import asyncio
import signal
import socket
import struct
import sys

BUFFER = 64 * 1024


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(BUFFER)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def main():
    listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pairs = []  # (client writer, upstream writer), oldest first

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            reset(client_writer)
            return
        pair = (client_writer, up_writer)
        pairs.append(pair)
        try:
            await asyncio.gather(pump(client_reader, up_writer), pump(up_reader, client_writer))
        finally:
            if pair in pairs:
                pairs.remove(pair)

    def cut():
        if not pairs:
            print("no connection to cut", flush=True)
            return
        client, upstream = pairs.pop(0)
        print("cut %s" % (client.get_extra_info("peername"),), flush=True)
        reset(client)
        reset(upstream)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("listening", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
