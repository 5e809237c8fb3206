"""The gunicorn worker of ``blackbox serve``: gthread, except that no thread waits for a slow client.

Why: gunicorn's gthread worker gives a connection to a thread as soon as it is
accepted; the thread waits up to 5 s for a first byte, then reads the headers
and (in the app) the body with blocking reads and no deadline. Clients sending
a byte a second thus hold every thread (2 workers x 16: 32 clients) and everyone else waits.

Here the worker's event loop (its one selector, no thread) reads each request
into a buffer without blocking until its headers and body are complete, and
only then does a thread parse and serve it, from memory. Bytes a client sent
behind that request (pipelining) go back into the loop's buffer afterwards, so
the next request on the connection is buffered like the first. The loop
answers ``Expect: 100-continue`` itself (gunicorn's own is suppressed) and
keeps buffering the body. A request that can never complete is refused at
once by the loop with a JSON error from the one table (serving/errors.py):
bare-LF line endings, a Transfer-Encoding not ending in ``chunked`` or a
malformed chunk size or chunk end, a chunk-size line (with its extensions)
over :data:`CHUNK_LINE_LIMIT` bytes or a body of over :data:`MAX_CHUNKS`
chunks (400, ``Connection: close``: the app could answer without reading the
body, and the connection could not go on), a Content-Length or chunked body
over the limit, or a chunked body whose framing, extensions and trailers
bring it over the limit plus :data:`HEADER_LIMIT` (413). The loop reads a
chunked body once however it trickles in (:class:`Scan`), and gunicorn's
parser is given the buffered bytes a read at a time (:class:`_Preread`), so a
body's parsing costs time linear in its size. A request line gunicorn
would refuse (HTTP/0.9's ``GET /``, say) goes to a thread at once, for the
parser's 400, without waiting for headers. A request still
incomplete ``READ_TIMEOUT`` seconds after its connection was accepted (or,
kept alive, became readable again, or its previous request was answered) gets
a JSON 408 and its connection is closed; a connection that sent nothing is
closed without an answer. A client that closes (or half-closes) in the middle
of a request gets what the parser and the app make of what it sent (a 400:
the request line, or a body shorter than its Content-Length), with
``Connection: close``. A chunked body is read whole by the thread before the
app sees it, so what the parser finds malformed in it (a bad trailer) gets
its 400 with ``Connection: close`` before any other answer (found when
draining a body the app left unread, it came after the app's answer, which
said keep-alive). A waiting client costs a file descriptor and its buffer,
never a thread.

Closing is the loop's too: gthread's ``close_graceful`` (FIN, then up to 2 s
waiting for the client, so unread input does not make the kernel reset the
answer away) blocks the loop and its heartbeat, so idle clients that never
close got the worker killed. Here the socket is half-closed and drained by the
loop, for :data:`LINGER` s or :data:`LINGER_BYTES` at most. A stopping worker
(SIGTERM, a reload retiring it) serves what it accepted; a connection that has
sent nothing is closed only :data:`STOP_GRACE` s after the stop (closing it at
once reset requests accepted just before the SIGTERM, their bytes in flight).

Limits: at most gunicorn's ``worker_connections`` (1000) connections per
worker, lingering ones included; each buffers at most :data:`HEADER_LIMIT` of
headers (longer ones are handed over at once: gunicorn answers 400/431) and
the body limit (``MAX_CONTENT_LENGTH``), a chunked one with
:data:`HEADER_LIMIT` more for its framing, extensions and trailers. TLS and HTTP/2 are handed to a thread
as gthread does; there every socket read and write is bounded by
``READ_TIMEOUT`` each (not in total). A client too slow for it while a
thread serves its request (reading the answer, say) is logged as one warning
line (at most one a second per worker), not gthread's traceback. The
loop does not check API keys: a client without one gets its 100 Continue and
its 401 once the body has arrived.

What gunicorn's own parser refuses (a malformed request line or method, an
invalid header name or value, a request line over ``limit_request_line``, more
than ``limit_request_fields`` headers or one over ``limit_request_field_size``)
is answered by :meth:`JsonErrors.handle_error` in the server's JSON shape with
gunicorn's status (400, 414, 431, ...), a message naming the limit and its
gunicorn setting, and a request id that its one warning line in the log
repeats; gunicorn would answer HTML. The sync worker (``--threads 1``,
:class:`SyncWorker`) answers the same way.

The sync worker serves one connection at a time, by design: it reads each
request whole (the same :func:`examine`, the same refusals and 100 Continue)
within ``READ_TIMEOUT`` in all before gunicorn parses it from memory, telling
gunicorn's heartbeat meanwhile, so a slow client gets the JSON 408 and never
gets the worker killed (``--timeout``: gunicorn's traceback and 500). What it
cannot do: while it reads one slow client (up to ``READ_TIMEOUT``, then up to
2 s of gunicorn's linger after the answer) every other client waits; facing
untrusted clients, use the default worker or a buffering proxy. Over TLS it
reads the same way once gunicorn has wrapped the socket (the handshake is part
of the first read, under the same deadline): a client that stalls mid-request
gets the JSON 408, one that stalls in the handshake is closed (no request yet).

A request in hand when gunicorn's master stops the worker for its timeout
(SIGABRT: on the sync worker ``SystemExit`` in the request's thread) is
answered 504 ``worker_timeout`` naming ``--timeout``, not a 500, and the
worker exits as gunicorn's does (the master replaces it). The default worker's
loop tells the heartbeat while its threads serve, so this is the sync worker's
case.

Readiness (both workers, under :class:`serving.gunicorn_app.Server`): once
every model of the worker's app is loaded (or has failed), the worker says so
in the server's :class:`Readiness` directory, a file named by its pid. A worker
the master starts while another is serving (``Server.hold``: a reload, a
replacement) loads its models before it enters the accept loop, notifying
gunicorn's heartbeat meanwhile, so connections go to the workers that serve; a
worker started when none is serving (the first ones) accepts at once, so
``/health`` answers while it loads. A held worker whose model failed to load
goes on holding (a reload's master stops it); it holds at most
``LOAD_TIMEOUT`` seconds in all, then accepts anyway (``/ready`` says why it
is not ready).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import selectors
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

from gunicorn import http, util
from gunicorn import sock as gunicorn_sock
from gunicorn.http import errors as parse_errors
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread, sync
from werkzeug.exceptions import (
    BadRequest,
    ExpectationFailed,
    Forbidden,
    HTTPException,
    InternalServerError,
    NotImplemented,
    RequestHeaderFieldsTooLarge,
    RequestURITooLarge,
)

from .errors import INTERNAL_MESSAGE, classify
from .http_errors import BodyTimeout, WorkerTimeout
from .payloads import _too_large
from .state import EXTENSION

HEADER_LIMIT = 64 * 1024
"""Bytes of request line and headers buffered; past that the request goes to gunicorn's parser (400/431)."""
DEFAULT_READ_TIMEOUT = 15.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)")
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:([^\r]*)")
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:")
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*(?=\r\n|$)")
_EXPECT_CONTINUE_LINE = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*(?=\r\n|$)", re.IGNORECASE)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_REQUEST_LINE = re.compile(rb"[^ ]+ [^ ]+ HTTP/.+|PROXY .*")
"""Every request line gunicorn's parser takes matches (method, target, version; or a PROXY protocol line)."""
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]+")
CHUNK_LINE_LIMIT = 1024
"""Bytes of a chunk-size line (size and extensions) the loop waits for; a longer one is refused (400)."""
MAX_CHUNKS = 8192
"""Chunks of one chunked body; more are refused (400): each costs the loop and gunicorn's parser a step."""
LINGER = 2.0
"""Seconds a closed connection drains what its client still sends (gunicorn's ``close_graceful``), in the loop."""
LINGER_BYTES = 64 * 1024
STOP_GRACE = 1.0
"""Seconds a stopping worker still waits for the first bytes of a connection it accepted (the request is on its way)."""


class _Conn(gthread.TConn):  # type: ignore[misc]  # gunicorn ships no type hints
    """A connection with the bytes the event loop read for it, handed to the parser first."""

    def __init__(self, *args: Any, read_timeout: float) -> None:
        super().__init__(*args)
        self.read_timeout = read_timeout
        self.buffer = bytearray()
        self.deadline = 0.0
        self.waiting = False
        self.continued = False  # the loop sent 100 Continue for the request in the buffer
        self.drained = 0  # bytes drained after close (see ThreadWorker._close); -1 once closed
        self.ended = False  # the client closed (or half-closed) before its request was whole
        self.scan = Scan()  # how far examine() has read the request in the buffer

    def init(self) -> None:
        super().init()  # in the thread, after gthread made the socket blocking
        self.sock.settimeout(self.read_timeout)
        if self.buffer:
            unreader = self.parser.unreader
            if not isinstance(unreader, _Preread):
                self.parser.unreader = _Preread(self.sock, unreader.take_buffered())
            self.parser.unreader.feed(bytes(self.buffer))
            self.buffer = bytearray()


class _Preread(SocketUnreader):  # type: ignore[misc]
    """gunicorn's socket reader that first returns the bytes the loop buffered, a piece at a time (from an offset).

    Handed them at once (``unread``), gunicorn's chunked parser copied what
    remained of them once per chunk: 8,192 chunks of an 8 MB body cost 79 s.
    """

    def __init__(self, sock: socket.socket, held: bytes) -> None:
        super().__init__(sock)
        self.unread(held)
        self._data = memoryview(b"")

    def feed(self, data: bytes) -> None:
        self._data = memoryview(bytes(self._data) + data)

    def chunk(self, size_hint: int | None = None) -> bytes:
        if not self._data:
            return bytes(super().chunk(size_hint))
        size = self.mxchunk if not size_hint or size_hint <= self.mxchunk else min(size_hint, self.max_body_chunk)
        piece, self._data = self._data[:size], self._data[size:]
        return bytes(piece)

    def take_buffered(self) -> bytes:
        data = bytes(super().take_buffered()) + bytes(self._data)
        self._data = memoryview(b"")
        return data


class JsonErrors:
    """gunicorn's ``handle_error`` with our JSON body instead of its HTML page (mixed into both workers)."""

    cfg: Any
    log: Any
    aborted: bool  # gunicorn's, set here by handle_abort

    def handle_abort(self, sig: int, frame: Any) -> None:
        """gunicorn's (the master's SIGABRT at the worker timeout: ``sys.exit`` in the thread at hand), remembered so
        that the request it interrupts (on the sync worker) is answered as that, not as a 500."""
        self.aborted = True
        super().handle_abort(sig, frame)  # type: ignore[misc]

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer what the parser refused (or an error outside the app) as JSON; log one line with the request id."""
        request_id = uuid.uuid4().hex
        if isinstance(exc, SystemExit) and self.aborted:
            self.log.error("Worker timeout (%d s) with a request in hand from ip=%s: answered 504 (request id %s)",
                           self.cfg.timeout, (addr or ("",))[0], request_id)
            _send_error(client, _stopped(self.cfg.timeout), request_id)
            return
        answer = refusal(exc, self.cfg)
        if answer is None:  # the server's fault, not the request's
            self.log.exception("Error handling request (request id %s)", request_id)
            answer = InternalServerError(INTERNAL_MESSAGE)
        else:
            self.log.warning("Invalid request from ip=%s, answered %d (request id %s): %s",
                             (addr or ("",))[0], answer.code, request_id, _shown(exc))
        _send_error(client, answer, request_id)


class Bounded:
    """The app's limits and the one warning line for a client too slow for them (mixed into both workers)."""

    wsgi: Any
    log: Any
    _limits: tuple[int | None, float] | None = None
    _slow_logged = 0.0

    def limits(self) -> tuple[int | None, float]:
        """(body limit in bytes, read timeout in seconds), from the app's settings."""
        if self._limits is None:
            state = getattr(self.wsgi, "extensions", {}).get(EXTENSION)
            settings = getattr(state, "settings", None)
            self._limits = (getattr(settings, "max_content_length", None),
                            float(getattr(settings, "read_timeout", DEFAULT_READ_TIMEOUT)))
        return self._limits

    def read_chunked(self, req: Any) -> None:
        """A chunked body read whole before the app sees it (from memory: the loop or :meth:`SyncWorker.receive` buffered
        it; TLS on the default worker reads the socket, as the app would), so that what gunicorn's parser finds
        malformed in it (a trailer, a chunk extension) is its 400 with ``Connection: close`` before any answer; found
        when draining what the app left unread, it came after an answer that said keep-alive. The app reads the bytes.
        At most one byte past the body limit is read: the app refuses that (413), and the connection closes."""
        body = getattr(req, "body", None)
        if body is None or not isinstance(body.reader, ChunkedReader):
            return
        limit = self.limits()[0]
        data = body.read() if limit is None else body.read(limit + 1)
        if limit is not None and len(data) > limit:
            req.force_close()
        req.body = Body(io.BytesIO(data))

    def too_slow(self, client: Any, timeout: float) -> None:
        """Log a socket read or write past the read timeout: one warning line, at most one a second."""
        now = time.monotonic()
        if now - self._slow_logged >= 1.0:
            self._slow_logged = now
            self.log.warning("Client %s too slow: a socket read or write took over the read timeout (%g s); "
                             "connection closed.", client, timeout)


class Readiness:
    """A private directory where each worker says its models are loaded: a file named by its pid, empty, or why not."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def mark(self, pid: int, failure: str | None) -> None:
        scratch = self.directory / f".{pid}"
        scratch.write_text(failure or "")
        os.replace(scratch, self.directory / str(pid))  # the master never reads half a file

    def read(self, pid: int) -> str | None:
        """None until the worker has said; then "" (loaded) or why a model did not load."""
        try:
            return (self.directory / str(pid)).read_text()
        except FileNotFoundError:
            return None

    def forget(self, pid: int) -> None:
        (self.directory / str(pid)).unlink(missing_ok=True)


def settled(wsgi: Any) -> tuple[bool, str | None]:
    """(whether every model of the app is loaded or has failed, why those that failed did); a model refused
    before the workers started (``UNAVAILABLE``) is settled and no failure of this worker."""
    state = getattr(wsgi, "extensions", {}).get(EXTENSION)
    if state is None:
        return True, None
    pending, failed = False, []
    for name, served in state.models.items():
        holder = served.holder
        if holder.model is not None or name in state.settings.unavailable:
            continue
        if holder.loading or holder.failure is None:
            pending = True
        else:
            failed.append(f"{name}: {holder.failure}")
    return not pending, "; ".join(failed) or None


class Held:
    """The accept loop entered once the app's models are loaded when the master says to hold (mixed into both workers)."""

    app: Any
    wsgi: Any
    pid: int
    ppid: int
    alive: bool
    log: Any
    notify: Callable[[], None]  # gunicorn's heartbeat

    def run(self) -> None:
        readiness: Readiness | None = getattr(self.app, "readiness", None)
        if readiness is not None:
            state = getattr(self.wsgi, "extensions", {}).get(EXTENSION)
            limit = float(getattr(getattr(state, "settings", None), "load_timeout", 120))
            deadline = time.monotonic() + limit
            if getattr(self.app, "hold", False):
                failure = self._settle(limit, deadline, self.notify)
                readiness.mark(self.pid, failure)
                # The master stops it; until then it must not accept (it has no model to answer with). Its own deadline
                # may pass first (the load's), so it waits one LOAD_TIMEOUT more for the master's (the hand-over's).
                while failure and self.alive and os.getppid() == self.ppid and time.monotonic() < deadline + limit:
                    self.notify()
                    time.sleep(0.1)
            else:
                threading.Thread(target=lambda: readiness.mark(self.pid, self._settle(limit, deadline, lambda: None)),
                                 name="blackbox-readiness", daemon=True).start()
        super().run()  # type: ignore[misc]

    def _settle(self, limit: float, deadline: float, tick: Callable[[], None]) -> str | None:
        """Until the models are loaded or failed (or ``deadline``, ``limit`` s from the start, or the worker is told
        to stop), calling ``tick`` meanwhile; why not, or None."""
        while True:
            done, failure = settled(self.wsgi)
            if done:
                return failure
            if not self.alive or os.getppid() != self.ppid:
                return "the worker was stopped while loading"
            if time.monotonic() >= deadline:
                self.log.warning("Models not loaded after %g s (LOAD_TIMEOUT): accepting requests meanwhile", limit)
                return f"the model did not load within {limit:g} s (LOAD_TIMEOUT, blackbox serve --load-timeout)"
            tick()
            time.sleep(0.1)


class SyncWorker(Bounded, JsonErrors, Held, sync.SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker (``--threads 1``): each request read whole within the read timeout first, JSON errors."""

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        """gunicorn's, except that gunicorn parses the request :meth:`receive` read, from memory, over TLS too (the
        socket wrapped as gunicorn does; the handshake happens in the first read, under the same deadline)."""
        req = None
        try:
            if self.cfg.is_ssl:
                client = gunicorn_sock.ssl_wrap_socket(client, self.cfg)
            request = self.receive(client)
            if request is None:
                return
            client.settimeout(self.limits()[1])  # each write of the answer
            client = _Buffered(client, bytes(request))  # type: ignore[assignment]  # a socket to gunicorn
            req = next(http.get_parser(self.cfg, client, addr))
            self.handle_request(listener, req, client, addr)
        except (StopIteration, parse_errors.NoMoreData) as exc:
            self.log.debug("Closing connection. %s", exc)
        except ssl.SSLError as exc:  # a failed handshake, say: one warning line (the 403 cannot get through)
            if exc.args[0] != ssl.SSL_ERROR_EOF:
                self.handle_error(req, client, addr, exc)
        except OSError as exc:  # writing the answer to a client that left
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as exc:  # noqa: BLE001  gunicorn's too: what the parser refused, the worker's abort
            self.handle_error(req, client, addr, exc)
        finally:
            util.close_graceful(client)

    def handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> None:
        """gunicorn's, with a client too slow for the read timeout logged as one warning line, not a traceback; a chunked
        body is read first (:meth:`Bounded.read_chunked`)."""
        try:
            self.read_chunked(req)
            super().handle_request(listener, req, client, addr)
        except TimeoutError:
            self.too_slow(addr, self.limits()[1])

    def receive(self, client: socket.socket) -> bytearray | None:
        """The request on ``client``, read until :func:`examine` says it is whole (or the client closed: the parser
        answers what it can of it), at most the read timeout in all, the heartbeat told between reads; None once
        answered (a 408, a refusal) or if the client sent nothing."""
        limit, timeout = self.limits()
        deadline = time.monotonic() + timeout
        buffer, continued, scan = bytearray(), False, Scan()
        while True:
            verdict = examine(buffer, limit, scan) if buffer else WAIT
            if verdict is READY:
                _drop_expect(buffer)  # answered here; gunicorn would send its own 100 Continue
                return buffer
            if isinstance(verdict, Exception):
                _send_error(client, verdict)
                return None
            if verdict is CONTINUE and not continued:
                continued = True
                _send(client, b"HTTP/1.1 100 Continue\r\n\r\n")
            left = deadline - time.monotonic()
            if left <= 0:
                if buffer:
                    _send_error(client, _late(timeout))
                return None
            self.notify()  # a slow client is no reason for gunicorn to kill the worker
            client.settimeout(min(left, 1.0))
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except ssl.SSLError:
                raise  # gunicorn's to log (a failed handshake)
            except OSError:
                return None
            if not data:
                return buffer or None
            buffer += data


class _Buffered:
    """A client socket whose reads return the bytes :meth:`SyncWorker.receive` read first (all else is the socket's)."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self._sock = sock
        self._data = memoryview(data)  # sliced without copying what remains (a chunked body is read 8 KiB a time)

    def recv(self, size: int, *flags: int) -> bytes:
        if not self._data:
            return self._sock.recv(size, *flags)
        data, self._data = self._data[:size], self._data[size:]
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ThreadWorker(Bounded, JsonErrors, Held, gthread.ThreadWorker):  # type: ignore[misc]
    """gthread with requests read in the event loop, under a deadline (see the module docstring)."""

    def init_process(self) -> None:
        self.reading: deque[tuple[float, _Conn]] = deque()  # (deadline, conn), in deadline order
        self.closing: deque[tuple[float, _Conn]] = deque()  # (deadline, conn) half-closed, draining
        self._stopped_at: float | None = None
        super().init_process()  # loads the app, then runs the loop

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

    def finish_request(self, conn: _Conn, fs: Any) -> None:
        """After a thread: bytes read past the request go back to the loop's buffer; a closed connection drains in the loop.

        gthread would hand read-ahead to a thread again (which then waits for the
        rest of the next request) and close with ``close_graceful``, which waits
        up to 2 s for the client, blocking this loop and its heartbeat.
        """
        if self.cfg.is_ssl or conn.is_http2 or fs.cancelled() or fs.exception() is not None:
            super().finish_request(conn, fs)
            return
        result = fs.result()
        if not result:
            self._close(conn)
            return
        leftover = conn.parser.unreader.take_buffered()  # (only TLS connections can be deferred: super's above)
        if not leftover:
            super().finish_request(conn, fs)  # kept alive: on_client_socket_readable buffers the next request
            return
        conn.sock.setblocking(False)
        conn.buffer += leftover
        self._await(conn)
        self._examine(conn)

    def handle_request(self, req: Any, conn: _Conn) -> bool:
        """gthread's, with a client too slow for the read timeout logged as one warning line (at most one a second);
        a request its client ended early (see :meth:`_read`) is answered with ``Connection: close``; a chunked body
        is read first (:meth:`Bounded.read_chunked`)."""
        if conn.ended:
            req.force_close()
        try:
            self.read_chunked(req)
            return bool(super().handle_request(req, conn))
        except TimeoutError:
            self.too_slow(conn.client, conn.read_timeout)
            return False

    def _await(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + conn.read_timeout
        conn.waiting = True
        conn.scan = Scan()
        self.reading.append((conn.deadline, conn))
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read, conn))

    def _read(self, conn: _Conn, _sock: Any) -> None:
        """The event loop: take what the socket holds; a complete request goes to a thread."""
        data = _recv(conn)
        if data is None:
            return
        if not data:  # the client closed, or half-closed: what it began is the parser's to answer (a 400, say)
            self._release(conn)
            if conn.buffer:
                conn.ended = True
                self._hand_over(conn)
                return
            self.nr_conns -= 1
            conn.close()
            return
        conn.buffer += data
        self._examine(conn)

    def _examine(self, conn: _Conn) -> None:
        """Hand the buffered request to a thread, refuse it, or answer its ``Expect: 100-continue`` and wait on."""
        verdict = examine(conn.buffer, self.limits()[0], conn.scan)
        if verdict is WAIT:
            return
        if verdict is CONTINUE:
            if not conn.continued:
                conn.continued = True
                _send(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._release(conn)
        if isinstance(verdict, Exception):
            _send_error(conn.sock, verdict)
            self._close(conn)
            return
        self._hand_over(conn)

    def _hand_over(self, conn: _Conn) -> None:
        """The buffered request to a thread (which gives the buffer to gunicorn's parser)."""
        _drop_expect(conn.buffer)  # gunicorn would send its own 100 Continue
        conn.continued = False
        conn.data_ready = True
        self.enqueue_req(conn)

    def _release(self, conn: _Conn) -> None:
        conn.waiting = False  # its entry in self.reading is skipped when it comes up
        self.poller.unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        """close_graceful from the loop: FIN now, then what the client still sends is drained for ``LINGER`` s at most.

        Closing with unread input would make the kernel send a reset, which can
        destroy the answer before the client has read it (RFC 9112 section 9.6).
        """
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.deadline = time.monotonic() + LINGER
        conn.drained = 0
        self.closing.append((conn.deadline, conn))
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn: _Conn, _sock: Any) -> None:
        data = _recv(conn)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self._closed(conn)

    def _closed(self, conn: _Conn) -> None:
        if conn.drained < 0:
            return  # already closed (its entry in self.closing came up after the client did)
        conn.drained = -1
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also close the connections whose request did not arrive in time (a 408 if it had begun), and end lingering ones."""
        super().murder_pending()
        now = time.monotonic()
        while self.closing and (self.closing[0][0] <= now or self.closing[0][1].drained < 0):
            self._closed(self.closing.popleft()[1])
        while self.reading and (self.reading[0][0] <= now or not self.reading[0][1].waiting):
            deadline, conn = self.reading.popleft()
            if not conn.waiting or conn.deadline != deadline:
                continue  # handed over, closed, or waiting again with a later deadline
            self._release(conn)
            if conn.buffer:
                _send_error(conn.sock, _late(conn.read_timeout))
            self._close(conn)
        if not self.alive:  # stopping: a connection silent STOP_GRACE s after the stop needs no answer
            self._stopped_at = self._stopped_at or now
            if now - self._stopped_at < STOP_GRACE:
                return  # closing one accepted just before the stop would reset the request its client sent
            for _, conn in list(self.reading):
                if conn.waiting and not conn.buffer:
                    self._release(conn)
                    self.nr_conns -= 1
                    conn.close()


WAIT = "wait"
"""The request is not all there yet: the loop reads on."""
CONTINUE = "continue"
"""Headers in, body not, and the client waits for ``100 Continue`` before sending it."""
READY = "ready"
"""A thread can take the request: whole, or one its parser or the app refuses without reading further."""


class Scan:
    """How far :func:`examine` has read a chunked body: the next call resumes there, so a body costs the loop one
    pass, however it trickles in. Valid while the buffer only grows (one per request: a new request, a new Scan)."""

    __slots__ = ("position", "chunks", "size", "total", "last")

    def __init__(self) -> None:
        self.position = 0  # where the next chunk-size line (or, after the last chunk, the trailers' search) begins
        self.chunks = 0  # chunks read (the last, zero-size one not counted)
        self.size = 0  # bytes of data in the last of them
        self.total = 0  # bytes of data in them all
        self.last = False  # the zero-size chunk is in: the trailers remain


def examine(buffer: bytearray, limit: int | None, scan: Scan | None = None) -> str | Exception:
    """What the loop does with the request in ``buffer``: :data:`WAIT`, :data:`CONTINUE`, :data:`READY`, or an
    exception to answer at once because the request can never be served (bad framing, a chunked body over ``limit``).
    ``scan``: where the previous call on this request left off (see :class:`Scan`); None reads from the start.
    """
    end = buffer.find(b"\r\n\r\n")
    if _BARE_LF.search(buffer, 0, len(buffer) if end < 0 else end):
        return BadRequest("The request's header lines end in a bare LF; HTTP/1.1 requires CRLF (\\r\\n) line endings.")
    start = 2 if buffer.startswith(b"\r\n") else 0  # gunicorn skips one empty line before the request line
    line_end = buffer.find(b"\r\n", start)
    if line_end >= 0 and not _REQUEST_LINE.fullmatch(buffer, start, line_end):
        return READY  # gunicorn's parser refuses it (400) before reading on: no need to wait for the headers
    if end < 0:
        return READY if len(buffer) > HEADER_LIMIT else WAIT
    head = bytes(buffer[:end]).lower()
    expect = _EXPECT.search(head)
    if expect and not _EXPECT_CONTINUE.search(head):
        return READY  # gunicorn answers 417
    encoding = _TRANSFER_ENCODING.search(head)
    if encoding:
        if encoding.group(1).split(b",")[-1].strip() != b"chunked":  # no way to tell where the body ends
            return BadRequest(f"Transfer-Encoding {encoding.group(1).strip()[:40].decode('latin-1')!r} does not end in "
                              "chunked; send the body with a Content-Length or Transfer-Encoding: chunked.")
        verdict = _chunks(buffer, end + 4, limit, scan or Scan())
    else:
        length = _CONTENT_LENGTH.search(head)
        size = int(length.group(1)) if length else 0
        if limit is not None and size > limit:
            return _too_large(limit, f"{size} bytes")
        verdict = READY if len(buffer) - end - 4 >= size else WAIT
    if verdict is WAIT and expect and not head.split(b"\r\n", 1)[0].endswith(b"http/1.0"):
        return CONTINUE
    return verdict


def _chunks(buffer: bytearray, start: int, limit: int | None, scan: Scan) -> str | Exception:
    """Whether a chunked body (from ``start``) ends in ``buffer``, read on from ``scan``; a 400 when a chunk size or a
    chunk's CRLF is wrong (as gunicorn's parser checks them), a chunk-size line is over :data:`CHUNK_LINE_LIMIT` or
    the chunks over :data:`MAX_CHUNKS`; a 413 when the data is over ``limit``, or all of it with its framing,
    extensions and trailers over ``limit`` + :data:`HEADER_LIMIT`. The app might answer without reading the body
    (a 415, say), and gthread would then find the framing broken while draining it and answer again; refused here,
    it gets one answer and ``Connection: close``. What else is malformed (extensions, trailers) goes to the parser
    (READY): :meth:`Bounded.read_chunked`.
    """
    position = max(scan.position, start)
    while not scan.last:
        if position > len(buffer):  # a chunk's data is still coming
            break
        if scan.chunks and buffer[position - 2:position] != b"\r\n":
            return _bad_chunks(f"a chunk of {scan.size} bytes is not followed by CRLF")
        line_end = buffer.find(b"\r\n", position, position + CHUNK_LINE_LIMIT + 2)
        if line_end < 0:
            if len(buffer) - position > CHUNK_LINE_LIMIT:
                return _bad_chunks(f"a chunk-size line, with its extensions, is over {CHUNK_LINE_LIMIT} bytes, the "
                                   "server's limit")
            break
        text, extension, _ = bytes(buffer[position:line_end]).partition(b";")
        text = text.rstrip(b" \t") if extension else text
        if not _CHUNK_SIZE.fullmatch(text):
            return _bad_chunks(f"a chunk size is {text[:20].decode('latin-1')!r}, not a hex number")
        size = int(text, 16)
        if size == 0:
            scan.last = True
            position = line_end  # the trailers end with an empty line: CRLF CRLF from here
            break
        scan.chunks += 1
        if scan.chunks > MAX_CHUNKS:
            return BadRequest(f"The chunked body has over {MAX_CHUNKS} chunks, the server's limit; send the body with "
                              "a Content-Length instead, or in larger chunks.")
        scan.size = size
        scan.total += size
        if limit is not None and scan.total > limit:
            return _too_large(limit, "a longer chunked body")
        position = line_end + 2 + size + 2
    scan.position, end = position, -1
    if scan.last:
        end = buffer.find(b"\r\n\r\n", position)
        scan.position = max(position, len(buffer) - 3)
    if limit is not None and (len(buffer) if end < 0 else end + 4) - start > limit + HEADER_LIMIT:
        return _too_large(limit, f"over {limit + HEADER_LIMIT} bytes of chunks with their framing, extensions and "
                                 f"trailers, the limit plus {HEADER_LIMIT}")
    return WAIT if end < 0 else READY


def _bad_chunks(what: str) -> BadRequest:
    return BadRequest(f"The chunked body is malformed ({what}); send each chunk as its size in hex, CRLF, that many "
                      "bytes, CRLF, and end with a zero-size chunk (or send a Content-Length instead).")


def _late(timeout: float) -> BodyTimeout:
    """The 408 of a request not whole within the read timeout."""
    return BodyTimeout(f"The request did not arrive within {timeout:g} s (the server's read timeout, setting "
                       "READ_TIMEOUT, blackbox serve --read-timeout); send the whole request at once.")


def _stopped(timeout: int) -> WorkerTimeout:
    """The 504 of a request in hand when the master stopped the worker for its timeout."""
    return WorkerTimeout(f"The server stopped the worker handling this request after {timeout} s without an answer "
                         "(gunicorn's worker timeout, blackbox serve --timeout); a new worker is starting. The model "
                         "is too slow for that timeout: raise --timeout (keeping --request-timeout below it), or send "
                         "fewer records per request.")


def _drop_expect(buffer: bytearray) -> None:
    """Remove ``Expect: 100-continue`` from the headers in ``buffer`` (the loop answered it, or the body came anyway)."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0:
        buffer[:end] = _EXPECT_CONTINUE_LINE.sub(b"", bytes(buffer[:end]))


def refusal(exc: BaseException, cfg: Any) -> HTTPException | None:
    """The answer to a request gunicorn's parser refused, with gunicorn's status; None when the request is not at fault.

    ``cfg`` is gunicorn's configuration: the messages name the limits it sets.
    """
    if isinstance(exc, _SERVER_FAULTS) or not isinstance(exc, (parse_errors.ParseException, ssl.SSLError)):
        return None
    if isinstance(exc, parse_errors.LimitRequestLine):
        return RequestURITooLarge(
            f"The request line (method, URL and HTTP version) is over {cfg.limit_request_line} bytes, the server's "
            "limit (gunicorn's limit_request_line setting): send a shorter URL; records go in a POST body, not the URL.")
    if isinstance(exc, parse_errors.LimitRequestHeaders):
        if "size" in str(exc):
            what = (f"A request header field (name, value and line end) is over {cfg.limit_request_field_size} bytes, "
                    "the server's limit (gunicorn's limit_request_field_size setting): send it shorter")
        elif "fields" in str(exc):
            what = (f"The request has over {cfg.limit_request_fields} header fields, the server's limit (gunicorn's "
                    "limit_request_fields setting): send fewer headers")
        else:
            what = ("The request's headers are larger in all than the server takes (gunicorn's limit_request_fields x "
                    f"limit_request_field_size: {cfg.limit_request_fields} x {cfg.limit_request_field_size} bytes): "
                    "send fewer or shorter headers")
        return RequestHeaderFieldsTooLarge(f"{what}; data goes in the body.")
    if isinstance(exc, parse_errors.UnsupportedTransferCoding):
        return NotImplemented(f"{_shown(exc)}; send the body with a Content-Length or Transfer-Encoding: chunked.")
    if isinstance(exc, _EXPECTATION):
        return ExpectationFailed(f"{_shown(exc)}; the only expectation the server meets is Expect: 100-continue.")
    if isinstance(exc, (parse_errors.ForbiddenProxyRequest, ssl.SSLError)):
        return Forbidden(f"{_shown(exc)}.")
    for kinds, hint in _HINTS:
        if isinstance(exc, kinds):
            return BadRequest(f"{_shown(exc)}: {hint}.")
    return BadRequest(f"{_shown(exc)}: the request is not valid HTTP/1.1 (RFC 9112).")


_SERVER_FAULTS = (parse_errors.ConfigurationProblem, *(getattr(parse_errors, name) for name in (
    "InvalidResponseHeader", "InvalidResponseHeaderName") if hasattr(parse_errors, name)))
"""Parse errors that are the server's: its configuration, or a header the application tried to send (newer gunicorn)."""
_EXPECTATION = tuple(getattr(parse_errors, name) for name in ("ExpectationFailed",) if hasattr(parse_errors, name))
_HINTS: tuple[tuple[tuple[type[Exception], ...], str], ...] = (
    ((parse_errors.InvalidRequestLine, parse_errors.InvalidRequestMethod, parse_errors.InvalidHTTPVersion),
     "a request begins with one line like 'POST /predict HTTP/1.1' (method, URL, version, separated by one space)"),
    ((parse_errors.InvalidHeader, parse_errors.InvalidHeaderName, *(getattr(parse_errors, name) for name in
                                                                    ("ObsoleteFolding",) if hasattr(parse_errors, name))),
     "each header is one line 'Name: value', the name a token (letters, digits and !#$%&'*+-.^_`|~) and the value "
     "without control characters"),
)


def _shown(exc: BaseException) -> str:
    """The parser's own words about the request, cut short (they quote what the client sent)."""
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _send(sock: socket.socket, data: bytes) -> None:
    """Best effort, without blocking (what does not fit in the socket's buffer is dropped)."""
    with contextlib.suppress(OSError):
        sock.send(data)


def _send_error(sock: socket.socket, exc: Exception, request_id: str | None = None) -> None:
    """A JSON error in the server's shape, its status and code from the one table (serving/errors.py); then close."""
    status, code = classify(exc)
    request_id = request_id or uuid.uuid4().hex
    message = exc.description if isinstance(exc, HTTPException) else str(exc)
    body = json.dumps({"error": {"code": code, "message": message, "details": []}, "request_id": request_id},
                      separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\nConnection: close\r\n\r\n").encode()
    _send(sock, head + body)


def _recv(conn: _Conn) -> bytes | None:
    """What the non-blocking socket holds: None when nothing yet, b"" when the client closed or the socket failed."""
    try:
        data: bytes = conn.sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
    return data
