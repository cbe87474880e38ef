"""Messages between a batch's processes: length-prefixed pickles over Unix stream sockets.

Every process on either end is one of ours, started by the same user from the same
interpreter, so pickle is as safe here as it is for :mod:`multiprocessing`. A message is a
4-byte big-endian length and the pickle. File descriptors travel with a message as ancillary
data (:func:`socket.send_fds`). End of stream (``None``) means the other process closed its end
or is gone.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

__all__ = ["Frames", "encode", "read", "recv", "send", "write"]

_HEADER = struct.Struct("!I")
_MAX_FDS = 4


def encode(message: Any) -> bytes:
    """The bytes of one message."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class Frames:
    """Cuts a byte stream into messages (bytes in with :meth:`feed`, messages out)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes read; returns the messages they complete, in order."""
        self._buffer += data
        out: list[Any] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            out.append(pickle.loads(bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return out


def send(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    """Send one whole message, with ``fds`` attached when given; blocks until it is sent.

    A non-blocking socket is made blocking for the send (and put back): the message is sent
    whole or not at all.
    """
    data = encode(message)
    was_blocking = sock.getblocking()
    sock.setblocking(True)
    try:
        if fds:
            sent = socket.send_fds(sock, [data], fds)
            data = data[sent:]
        if data:
            sock.sendall(data)
    finally:
        sock.setblocking(was_blocking)


def recv(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one message and the descriptors sent with it; ``None`` at the end of the stream.

    For a blocking socket that carries only messages from :func:`send` and has one reader.
    """
    fds: list[int] = []
    header = b""
    while len(header) < _HEADER.size:
        data, more, _, _ = socket.recv_fds(sock, _HEADER.size - len(header), _MAX_FDS)
        if not data:
            return None
        header += data
        fds.extend(more)
    (size,) = _HEADER.unpack(header)
    payload = bytearray()
    while len(payload) < size:
        data, more, _, _ = socket.recv_fds(sock, size - len(payload), _MAX_FDS)
        if not data:
            return None
        payload += data
        fds.extend(more)
    return pickle.loads(bytes(payload)), fds


async def read(reader: asyncio.StreamReader) -> Any | None:
    """The next message from an asyncio stream; ``None`` at the end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def write(writer: asyncio.StreamWriter, message: Any) -> None:
    """Queue one message on an asyncio stream (the transport writes it in the background)."""
    if not writer.is_closing():
        writer.write(encode(message))
