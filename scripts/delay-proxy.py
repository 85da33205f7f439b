#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time in each direction.

The kernel here has tbf but no netem, so the link's latency comes from this
proxy (the rate comes from tbf on a veth pair). Each chunk read from one side
is written to the other side DELAY ms after it was read; chunks are pipelined,
so the delay adds latency without cutting throughput. A new connection's first
request is held one extra round trip, as a TCP handshake over the link would.

    delay-proxy.py LISTEN_HOST UPSTREAM_HOST UPSTREAM_PORT DELAY_MS STATS_FILE

Prints the listening port on stdout. On SIGUSR1 it writes
"<bytes to clients> <bytes to upstream> <connections> <bytes to clients
answering Range requests>" to STATS_FILE. Requests on a connection follow each
other (HTTP/1.1 without pipelining), so an answer's bytes belong to the last
request sent on it.
"""

import asyncio
import signal
import sys

CHUNK = 256 * 1024
# Bytes in flight per direction are bounded (backpressure, as a link's queue).
QUEUE_CHUNKS = 64

stats = {"down": 0, "up": 0, "conns": 0, "ranged": 0}


async def relay(reader, writer, delay, not_before, key, conn):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(maxsize=QUEUE_CHUNKS)

    async def receive():
        while True:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = max(due, not_before) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if key == "up" and data[:4] in (b"GET ", b"HEAD"):
                conn["ranged"] = b"\r\nrange:" in data.lower()
            writer.write(data)
            stats[key] += len(data)
            if key == "down" and conn["ranged"]:
                stats["ranged"] += len(data)
            await writer.drain()

    receiver = asyncio.create_task(receive())
    try:
        await send()
    finally:
        receiver.cancel()


async def handle(client_reader, client_writer, upstream, delay):
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    stats["conns"] += 1
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    # SYN, SYN-ACK, then the first data: it reaches the server 1.5 round trips in.
    handshake = accepted + 3 * delay
    conn = {"ranged": False}
    tasks = [
        asyncio.create_task(relay(client_reader, up_writer, delay, handshake, "up", conn)),
        asyncio.create_task(relay(up_reader, client_writer, delay, 0, "down", conn)),
    ]
    # Both directions end on EOF; a reset on either side ends the connection.
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in (client_writer, up_writer):
        w.close()


async def main():
    listen_host, up_host, up_port, delay_ms, stats_file = sys.argv[1:6]
    delay = float(delay_ms) / 1000
    upstream = (up_host, int(up_port))
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay), listen_host, 0
    )

    def dump():
        with open(stats_file, "w") as f:
            f.write(f"{stats['down']} {stats['up']} {stats['conns']} {stats['ranged']}\n")

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
