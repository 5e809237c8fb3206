"""The gunicorn worker of ``blackbox serve``: gthread, except that no thread waits for a slow client.

Why: gunicorn's gthread worker gives a connection to a thread as soon as it is
accepted; the thread waits up to 5 s for a first byte, then reads the headers
and (in the app) the body with blocking reads and no deadline. Clients sending
a byte a second thus hold every thread (2 workers x 32) and everyone else waits.

Here the worker's event loop (its one selector, no thread) reads each request
into a buffer without blocking until its headers and body are complete, and
only then does a thread parse and serve it, from memory. A request still
incomplete ``READ_TIMEOUT`` seconds after its connection was accepted (or, kept
alive, became readable again) gets a JSON 408 and its connection is closed; a
connection that sent nothing is closed without an answer. A waiting client
costs a file descriptor and its buffer, never a thread.

Limits: at most gunicorn's ``worker_connections`` (1000) connections per
worker; each buffers at most the body limit (``MAX_CONTENT_LENGTH``) plus
:data:`HEADER_LIMIT` (a longer body is handed over at once: the app answers
413). A request with ``Expect: 100-continue``, a request pipelined behind
another, TLS and HTTP/2 are handed to a thread as gthread does; there every
socket read and write is bounded by ``READ_TIMEOUT`` each (not in total).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import selectors
import time
import uuid
from collections import deque
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from .state import EXTENSION

HEADER_LIMIT = 64 * 1024
"""Bytes of request line and headers buffered; past that the request goes to gunicorn's parser (400/431)."""
DEFAULT_READ_TIMEOUT = 15.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)")
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r]*chunked")
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:")


class _Conn(gthread.TConn):  # type: ignore[misc]  # gunicorn ships no type hints
    """A connection with the bytes the event loop read for it, handed to the parser first."""

    def __init__(self, *args: Any, read_timeout: float) -> None:
        super().__init__(*args)
        self.read_timeout = read_timeout
        self.buffer = bytearray()
        self.deadline = 0.0
        self.waiting = False

    def init(self) -> None:
        super().init()  # in the thread, after gthread made the socket blocking
        self.sock.settimeout(self.read_timeout)
        if self.buffer:
            self.parser.unreader.unread(bytes(self.buffer))
            self.buffer = bytearray()


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread with requests read in the event loop, under a deadline (see the module docstring)."""

    def init_process(self) -> None:
        self.reading: deque[tuple[float, _Conn]] = deque()  # (deadline, conn), in deadline order
        self._limits: tuple[int | None, float] | None = None
        super().init_process()  # loads the app, then runs the loop

    def limits(self) -> tuple[int | None, float]:
        """(body limit in bytes, read timeout in seconds), from the app's settings."""
        if self._limits is None:
            state = getattr(self.wsgi, "extensions", {}).get(EXTENSION)
            settings = getattr(state, "settings", None)
            self._limits = (getattr(settings, "max_content_length", None),
                            float(getattr(settings, "read_timeout", DEFAULT_READ_TIMEOUT)))
        return self._limits

    def accept(self, listener: Any) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):  # another worker took it, or the client left
                return
            raise
        self.nr_conns += 1
        conn = _Conn(self.cfg, sock, client, listener.getsockname(), read_timeout=self.limits()[1])  # non-blocking
        if self.cfg.is_ssl or "h2" in getattr(self.cfg, "http_protocols", ()):
            self.enqueue_req(conn)  # gthread's own path (the handshake and preface need the thread)
            return
        self._await(conn)

    def on_client_socket_readable(self, conn: _Conn, client: Any) -> None:
        """A kept-alive connection sends its next request: buffer it too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await(conn)
        self._read(conn, client)

    def _await(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + conn.read_timeout
        conn.waiting = True
        self.reading.append((conn.deadline, conn))
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read, conn))

    def _read(self, conn: _Conn, _sock: Any) -> None:
        """The event loop: take what the socket holds; a complete request goes to a thread."""
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed
            self._release(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.buffer += data
        if complete(conn.buffer, self.limits()[0]):
            self._release(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _release(self, conn: _Conn) -> None:
        conn.waiting = False  # its entry in self.reading is skipped when it comes up
        self.poller.unregister(conn.sock)

    def murder_pending(self) -> None:
        """Also close the connections whose request did not arrive in time (a 408 if it had begun)."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and (self.reading[0][0] <= now or not self.reading[0][1].waiting):
            deadline, conn = self.reading.popleft()
            if not conn.waiting or conn.deadline != deadline:
                continue  # handed over, closed, or waiting again with a later deadline
            self._release(conn)
            if conn.buffer:
                _send_timeout(conn)
            self.nr_conns -= 1
            conn.close()
        if not self.alive:  # stopping: idle connections need no answer
            for _, conn in list(self.reading):
                if conn.waiting and not conn.buffer:
                    self._release(conn)
                    self.nr_conns -= 1
                    conn.close()


def complete(buffer: bytearray, limit: int | None) -> bool:
    """Whether a thread can take the request in ``buffer``: whole, or one its parser or the app refuses at once."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > HEADER_LIMIT
    head = bytes(buffer[:end]).lower()
    if _EXPECT.search(head):
        return True  # the client waits for gunicorn's 100 Continue before sending the body
    if _CHUNKED.search(head):
        return _chunks_complete(buffer, end + 4, limit)
    length = _CONTENT_LENGTH.search(head)
    if length is None:
        return True
    size = int(length.group(1))
    return (limit is not None and size > limit) or len(buffer) - end - 4 >= size


def _chunks_complete(buffer: bytearray, position: int, limit: int | None) -> bool:
    """Whether a chunked body ends in ``buffer`` (or is malformed, or over the limit: a thread answers it)."""
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return len(buffer) - position > 1024
        try:
            size = int(bytes(buffer[position:line_end]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            return True
        if size < 0:
            return True
        if size == 0:
            return buffer.find(b"\r\n\r\n", line_end) >= 0  # the end of the trailers
        total += size
        if limit is not None and total > limit:
            return True
        position = line_end + 2 + size + 2
        if position > len(buffer):
            return False


def _send_timeout(conn: _Conn) -> None:
    """Best effort, without blocking: a JSON 408 in the server's error shape."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"error": {
        "code": "request_timeout",
        "message": f"The request did not arrive within {conn.read_timeout:g} s (the server's read timeout, setting "
                   "READ_TIMEOUT, blackbox serve --read-timeout); send the whole request at once.",
        "details": [],
    }, "request_id": request_id}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        conn.sock.send(head + body)
