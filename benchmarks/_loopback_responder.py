"""A minimal asyncio HTTP/1.1 responder that answers every POST like a chat-completions endpoint.

The benchmarks' loopback server: it runs on the same cores as the client it measures, so it does
as little as it can. It reads a request's head and ``Content-Length`` bytes of body (the body is
never parsed) and, ``latency`` seconds later, writes one prebuilt reply: a chat completion whose
content answers ``question -> answer`` in DSPy's ChatAdapter format, with usage. Connections are
kept alive (HTTP/1.1), so a pooled client opens each connection once.

``GET /stats`` answers at once with this process's CPU seconds and its request count, so a
benchmark can report what the server spent on each contender.

Run it as a process of its own (``python _loopback_responder.py --latency 0.02``): it prints
``PORT <n>`` once it listens and serves until its standard input closes or it gets SIGTERM.
:func:`start` does that from a benchmark and returns the process and its base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

CONTENT = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"


def completion(content: str = CONTENT, model: str = "bench-model") -> bytes:
    """The JSON body of every answer."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129},
        }
    ).encode()


def _reply(body: bytes, status: str = "200 OK") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Stats:
    requests = 0


class _Connection(asyncio.Protocol):
    """One client connection: split requests off the byte stream, answer each after a delay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, latency: float, reply: bytes) -> None:
        self.loop = loop
        self.latency = latency
        self.reply = reply
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.need = -1  # bytes of the current request (head + body), once its head is read
        self.close_after = False
        self.method = b""
        self.path = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip() == b"close":
                        self.close_after = True
                self.need = end + 4 + length
                self.method = head[: head.find(b" ")]
                self.path = head.split(b" ", 2)[1]
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = -1
            self._answer()

    def _answer(self) -> None:
        if self.method == b"get" and self.path == b"/stats":
            stats = json.dumps({"cpu": time.process_time(), "requests": _Stats.requests})
            self._write(_reply(stats.encode()))
            return
        _Stats.requests += 1
        if self.latency > 0:
            self.loop.call_later(self.latency, self._write, self.reply)
        else:
            self._write(self.reply)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self.close_after:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(latency: float, port: int = 0, content: str = CONTENT) -> None:
    loop = asyncio.get_running_loop()
    reply = _reply(completion(content))
    server = await loop.create_server(
        lambda: _Connection(loop, latency, reply), "127.0.0.1", port, backlog=1024
    )
    sock = server.sockets[0]
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 1024) else None)
    async with server:
        await stop.wait()


def start(latency: float) -> tuple[subprocess.Popen[str], str]:
    """Start the responder in its own process; return it and its base URL (``…/v1``)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--latency", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "PORT":
        proc.kill()
        raise RuntimeError(f"the loopback responder did not start: {line}")
    return proc, f"http://127.0.0.1:{line[1]}/v1"


def stats(base_url: str) -> dict[str, Any]:
    """The responder's CPU seconds and request count so far."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", "/stats")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def stop(proc: subprocess.Popen[str]) -> None:
    """End the responder (closing its standard input) and wait for it."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.latency, args.port))
    except ImportError:
        asyncio.run(serve(args.latency, args.port))


if __name__ == "__main__":
    main()
