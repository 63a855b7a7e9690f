#!/usr/bin/env python3
"""The kernel's share of one phone byte on loopback, with nothing else around it (issue #17).

The seed's exchange, per phone: a 7-byte masked WebSocket frame up, a `{"durable":N}` frame
down after a pause, each acknowledged by TCP. This opens N loopback connection pairs per group
(one group per congestion control named), then for ROUNDS rounds, groups alternating, does on
every pair: send the byte, pause, read it, pause, send the answer, pause, read it, pause. The
pauses (60 ms, longer than Linux's 40 ms minimum delayed ACK) keep each socket out of quick
ping-pong, as a phone that sends once a minute is. It prints the median system CPU time per
exchange (getrusage: the kernel's work for the four calls and the four segments they cause, both
ends, since on loopback the sender does the receiver's work too). Python's own time is user time
and not counted. Needs 4 N + a few open files.

    python3 scripts/bench/loopback-floor.py [N] [ROUNDS] [cc,cc...]     (4900 40 cubic,bbr)
"""
import resource
import socket
import statistics
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4900
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 40
GROUPS = sys.argv[3].split(",") if len(sys.argv) > 3 else ["cubic", "bbr"]
PAUSE_S = 0.06
BYTE = b"\x82\x81abcd."  # a masked binary frame of one byte
ANSWER = b'\x81\x0e{"durable":42}'


def tune(sock, cc):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pairs(listener, port, cc):
    out = []
    for _ in range(N):
        c = socket.socket()
        tune(c, cc)
        c.connect(("127.0.0.1", port))
        s, _ = listener.accept()
        tune(s, cc)
        out.append((c, s))
    return out


def system_s():
    # getrusage: the kernel scales its tick-sampled user/system split to the task's
    # nanosecond runtime, so a round's figure is not a whole number of 10 ms ticks.
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    groups = {cc: pairs(listener, port, cc) for cc in GROUPS}
    spent = {cc: [] for cc in GROUPS}
    for r in range(ROUNDS):
        for cc in GROUPS if r % 2 == 0 else GROUPS[::-1]:
            start = system_s()
            for step in range(4):
                for c, s in groups[cc]:
                    if step == 0:
                        c.send(BYTE)
                    elif step == 1:
                        s.recv(64)
                    elif step == 2:
                        s.send(ANSWER)
                    else:
                        c.recv(64)
                time.sleep(PAUSE_S)  # the delayed-ACK timers fire meanwhile: counted
            spent[cc].append(system_s() - start)
    for cc in GROUPS:
        median, mean = statistics.median(spent[cc]), statistics.mean(spent[cc])
        print(f"{cc}: {N} pairs, {ROUNDS} rounds: system CPU per exchange, median "
              f"{median / N * 1e6:.2f} us, mean {mean / N * 1e6:.2f} us "
              f"(rounds {min(spent[cc]) * 1e3:.0f}-{max(spent[cc]) * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
