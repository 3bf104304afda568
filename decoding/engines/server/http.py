"""HTTP to an inference server: what is sent is checked before any request, and every wait is bounded.

`server_address` checks `--url` and the key (`LoadOptions` calls it, so the command line refuses a
bad one at once, before anything is sent). `Http` sends JSON and reads the answer under one deadline
per request (connecting, the first byte and the whole body alike) and a cap on the body's size;
`interrupt` cuts the requests in flight short (esc, quitting). Standard library only: the command
line checks addresses before torch is imported.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from decoding.core.errors import LoadError, TokenstepError
from decoding.core.json_text import JsonError, parse_json

CONNECT_SECONDS = 5.0
REQUEST_SECONDS = 30.0  # the whole of one request, unless $TOKENSTEP_SERVER_SECONDS says otherwise
SECONDS_VARIABLE = "TOKENSTEP_SERVER_SECONDS"
KEY_VARIABLE = "TOKENSTEP_API_KEY"
MAX_SECONDS = 3600.0
MAX_REPLY_BYTES = 32 << 20  # the largest reply asked for, a whole vocabulary's pieces, is ~1.5 MB for 49,152 tokens
KEPT_CONNECTIONS = 16  # idle kept-alive connections (as many as requests go out at once)
# What a kept-alive connection the server has since closed raises: it is opened again, once.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class ServerError(TokenstepError):
    """The server could not be reached, answered with an error, or answered something unexpected."""


@dataclass(frozen=True)
class Address:
    """Where a server is and what every request to it carries, checked."""

    base: str  # scheme://host[:port][/prefix], as messages name the server
    scheme: str
    host: str
    port: int | None
    prefix: str  # the path the server's endpoints are under ("" for most)
    headers: dict[str, str] = field(hash=False)
    seconds: float = REQUEST_SECONDS  # the deadline of one request


def server_address(url: str, api_key: str | None, key_source: str = "--api-key") -> Address:
    """`url` and `api_key` checked: one line saying what is wrong, before any request."""
    bad = next((index for index, ch in enumerate(url) if not "!" <= ch <= "~"), None)
    if bad is not None:
        raise LoadError(
            f"--url: character {bad + 1} is U+{ord(url[bad]):04X}, which an address cannot hold "
            "(spaces, control characters and non-ASCII letters are percent-encoded, such as %20)."
        )
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
    except ValueError:  # a bracketed host that is not an IPv6 address
        raise LoadError(f"--url {url}: the host in brackets is not an IPv6 address, such as http://[::1]:8000.") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise LoadError(f"--url {url}: give the server's address, such as http://127.0.0.1:8000")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        raise LoadError(f"--url {url}: the port must be a whole number from 1 to 65535, such as http://127.0.0.1:8000.")
    if parsed.username is not None:
        raise LoadError(f"--url {url}: leave the user and password out of the address; give a key with --api-key.")
    if parsed.query or parsed.fragment or url.endswith(("?", "#")):
        raise LoadError(f"--url {url}: give the server's address without a ?query or #fragment.")
    prefix = parsed.path.rstrip("/")
    prefix = prefix.removesuffix("/v1")  # the OpenAI-style prefix: every dialect's endpoints are found from the root
    base = f"{parsed.scheme}://{parsed.netloc}{prefix}"
    return Address(base, parsed.scheme, host, port, prefix, _headers(api_key, key_source), _request_seconds())


def _headers(api_key: str | None, key_source: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        bad = next((index for index, ch in enumerate(api_key) if not (" " <= ch <= "~" or "\xa0" <= ch <= "\xff")), None)
        if bad is not None:
            raise LoadError(
                f"{key_source}: character {bad + 1} is U+{ord(api_key[bad]):04X}, which an HTTP header cannot carry "
                "(a key is printable text, as the server issued it)."
            )
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _request_seconds() -> float:
    raw = os.environ.get(SECONDS_VARIABLE)
    if raw is None:
        return REQUEST_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_SECONDS:
        raise LoadError(f"${SECONDS_VARIABLE} must be a number of seconds above 0, at most {MAX_SECONDS:g} (got {raw!r}).")
    return seconds


@dataclass(frozen=True)
class Reply:
    status: int
    value: Any  # the JSON value; None when the body is empty or not JSON
    text: str  # how the body starts, for messages


class Http:
    """JSON over HTTP/1.1 to one server. Kept-alive connections are shared by the threads that ask
    (requests go out concurrently for beams and work ahead); each request runs under one deadline,
    and a cut (its deadline, or `interrupt`) shuts its socket, which wakes a thread waiting on it."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.base = address.base
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._cut: dict[http.client.HTTPConnection, str] = {}  # busy connections cut short, and why

    def get(self, path: str) -> Reply:
        return self.ask("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON value of a 200 answer; anything else is a ServerError."""
        reply = self.ask("POST", path, body)
        if reply.status != 200:
            raise ServerError(f"{self.base}{path} answered {reply.status}: {said(reply.text)}")
        if reply.value is None:
            raise ServerError(f"{self.base}{path} answered with something that is not JSON: {said(reply.text)}")
        return reply.value

    def ask(self, method: str, path: str, body: dict[str, Any] | None = None) -> Reply:
        payload = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.address.seconds
        for attempt in (0, 1):
            connection, reused = self._take()
            try:
                status, data = self._exchange(connection, method, self.address.prefix + path, payload, deadline)
            except (OSError, http.client.HTTPException, _TooLarge) as error:
                why = self._drop(connection)
                if why is None and reused and not attempt and isinstance(error, STALE):
                    continue
                raise ServerError(self._failure(path, error, why)) from None
            finally:
                self._release(connection)
            return _reply(status, data)
        raise AssertionError("the loop returns or raises")

    def interrupt(self) -> None:
        """Cut every request in flight short: each fails at once with a ServerError saying so."""
        with self._lock:
            busy = list(self._busy)
            for connection in busy:
                self._cut.setdefault(connection, "interrupted")
        for connection in busy:
            _shut(connection)

    # --- one exchange --------------------------------------------------------------------------

    def _exchange(
        self, connection: http.client.HTTPConnection, method: str, path: str, payload: bytes | None, deadline: float
    ) -> tuple[int, bytes]:
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._expire, (connection,))
        timer.daemon = True
        timer.start()
        try:
            if connection.sock is None:
                self._connect(connection, deadline)
            connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            connection.request(method, path, payload, self.address.headers)
            response = connection.getresponse()
            if response.length is not None and response.length > MAX_REPLY_BYTES:
                raise _TooLarge(response.length)
            data = response.read(MAX_REPLY_BYTES + 1)
            if len(data) > MAX_REPLY_BYTES:
                raise _TooLarge(len(data))
            if connection in self._cut:  # the body was cut short at its deadline, or interrupted
                raise ConnectionAbortedError("cut short")
            if response.length:  # the server closed the connection before the body's end
                raise http.client.IncompleteRead(data, response.length)
            if not response.isclosed() or response.will_close:
                connection.close()  # a body left unread, or the server's wish: this connection is not reused
            return response.status, data
        finally:
            timer.cancel()

    def _connect(self, connection: http.client.HTTPConnection, deadline: float) -> None:
        seconds = max(min(CONNECT_SECONDS, deadline - time.monotonic()), 0.001)
        connection.timeout = seconds
        try:
            connection.connect()
        except TimeoutError:
            raise ConnectionError(f"no connection within {seconds:g} s") from None
        if connection in self._cut:  # cut while connecting, before there was a socket to shut
            raise ConnectionAbortedError("cut short")

    def _failure(self, path: str, error: BaseException, why: str | None) -> str:
        base = self.base
        if why == "interrupted":
            return f"the request to {base}{path} was cancelled"
        if why == "deadline" or isinstance(error, TimeoutError):
            return (
                f"{base}{path} did not answer within {self.address.seconds:g} s (${SECONDS_VARIABLE} allows a slower server more)"
            )
        if isinstance(error, _TooLarge):
            return f"{base}{path} answered with {error.size:,} bytes, more than tokenstep reads ({MAX_REPLY_BYTES:,})"
        if isinstance(error, http.client.RemoteDisconnected):
            return f"{base}{path} closed the connection without an answer"
        if isinstance(error, http.client.HTTPException):
            return f"{base}{path} did not answer as an HTTP server does ({said(error)})"
        return f"{base} cannot be reached ({said(error)}): is the server running?"

    # --- the connections -----------------------------------------------------------------------

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
            reused = connection is not None
            if connection is None:
                kind = http.client.HTTPSConnection if self.address.scheme == "https" else http.client.HTTPConnection
                connection = kind(self.address.host, self.address.port, timeout=CONNECT_SECONDS)
            self._busy.add(connection)
        return connection, reused

    def _release(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._busy.discard(connection)
            cut = self._cut.pop(connection, None)
            if cut is None and connection.sock is not None and len(self._idle) < KEPT_CONNECTIONS:
                self._idle.append(connection)
            else:
                connection.close()

    def _drop(self, connection: http.client.HTTPConnection) -> str | None:
        """Close a connection that failed; why it was cut short, if it was."""
        connection.close()
        with self._lock:
            return self._cut.get(connection)

    def _expire(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if connection not in self._busy:
                return
            self._cut.setdefault(connection, "deadline")
        _shut(connection)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def _shut(connection: http.client.HTTPConnection) -> None:
    """Wake whatever waits on the connection's socket (its own thread closes it after)."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _reply(status: int, data: bytes) -> Reply:
    text = data[:300].decode("utf-8", "replace")
    if not data.strip():
        return Reply(status, None, text)
    try:
        return Reply(status, parse_json(data), text)
    except JsonError:
        return Reply(status, None, text)


def said(value: Any) -> str:
    """A value, an error or a body's text for a one-line message: its first line, 300 characters at most."""
    if isinstance(value, BaseException):
        text = str(value) or type(value).__name__
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)[:300]
    lines = text.strip().splitlines()
    first = lines[0] if lines else "nothing"
    return first if len(first) <= 300 else first[:299] + "…"
