"""Connect the server engine to a served model: its options checked before any request."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from decoding.core.engine import Engine
from decoding.core.errors import LoadError
from decoding.engines.server.http import KEY_VARIABLE, server_address

SERVER_TOP_RANGE = (2, 1000)  # candidates a server is asked for per step


@dataclass(frozen=True)
class ServerOptions:
    """--url, --api-key, --server-top and --tokenizer: which server, and how it is asked."""

    url: str | None = None
    api_key: str | None = None  # for a server behind a key (else $TOKENSTEP_API_KEY)
    server_top: int = 20  # the top N log-probabilities asked for per step
    tokenizer: str | None = None  # a local copy of the served model's tokenizer

    def __post_init__(self) -> None:
        low, high = SERVER_TOP_RANGE
        if not low <= self.server_top <= high:
            raise LoadError(f"--server-top must be from {low} to {high} (got {self.server_top}).")

    def check_address(self) -> None:
        if not self.url:
            raise LoadError("--engine server needs --url, the server's address (such as http://127.0.0.1:8000).")
        key, source = server_key(self.api_key)
        server_address(self.url, key, source)  # a bad address or key is refused before any request


def server_key(api_key: str | None) -> tuple[str | None, str]:
    """The key a server is asked with (--api-key, else $TOKENSTEP_API_KEY), and where it came from."""
    if api_key:
        return api_key, "--api-key"
    return os.environ.get(KEY_VARIABLE) or None, f"${KEY_VARIABLE}"


def load_server(options: ServerOptions, progress: Callable[[str], object]) -> Engine:
    from decoding.engines.server.engine import ServerEngine, ServerError

    assert options.url is not None, "checked by check_address"
    progress(f"asking {options.url} what it serves")
    api_key, _ = server_key(options.api_key)
    try:
        return ServerEngine(options.url, api_key=api_key, top=options.server_top, tokenizer=options.tokenizer)
    except ServerError as error:
        raise LoadError(f"--engine server: {error}") from None
