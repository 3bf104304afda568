"""`tokenstep serve`: the explorer in a browser, through textual-serve.

Each browser session runs the app (`tokenstep` with the options given) as a process of its own over
a websocket; all of them stop with the server. A web server that runs a model as its user is a door:
an access token, random per start unless given, guards the page, its files, the websocket and the
downloads (as Jupyter's does). The page's address carries it once; the page then holds it in a
cookie that only this site's own requests carry (SameSite=Strict, HttpOnly), and the websocket
also checks that the page asking is this server's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve import app_service, server

TEMPLATES = Path(__file__).with_name("web")
COOKIE = "tokenstep_token"
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,256}")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_SECONDS = 5.0  # how long an app is given to quit when its page closes or the server stops


def check_token(token: str) -> str:
    """A token given (--token, $TOKENSTEP_TOKEN): 16 to 256 URL-safe characters, or one line."""
    if not TOKEN_SHAPE.fullmatch(token):
        raise ValueError("the access token must be 16 to 256 letters, digits, '-' or '_'")
    return token


def new_token() -> str:
    return secrets.token_urlsafe(24)


class StoppedApp(app_service.AppService):
    """An app process that is always stopped: given STOP_SECONDS to quit, then killed; and known to
    the server, which stops every one still running when it stops itself."""

    running: set[StoppedApp] = set()

    async def start(self, width: int, height: int) -> None:
        await super().start(width, height)
        StoppedApp.running.add(self)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(super().stop(), STOP_SECONDS)
        except TimeoutError:
            if self._process is not None and self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
        finally:
            StoppedApp.running.discard(self)


setattr(server, "AppService", StoppedApp)  # noqa: B010 (textual-serve makes one per websocket by this name)


class TokenServer(server.Server):
    def __init__(self, command: list[str], host: str, port: int, token: str) -> None:
        super().__init__(shlex.join(command), host=host, port=port, title="tokenstep", templates_path=TEMPLATES)
        self.token = token

    def address(self) -> str:
        """Where a person opens the app, token included."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def initialize_logging(self) -> None:
        """Only what goes wrong: a line per request would bury the address."""
        logging.basicConfig(level="WARNING", format="tokenstep serve: %(message)s")

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every request needs the token: in the page's address (which then sets the cookie), or the
        cookie; the websocket also needs to come from this server's own page."""
        given = request.query.get("token") if request.path == "/" else None
        cookie = request.cookies.get(COOKIE)
        if not (self._is_token(given) or self._is_token(cookie)):
            return web.Response(
                status=401,
                text="tokenstep serve: this address needs its access token (the line tokenstep serve printed: /?token=...)\n",
            )
        if request.path == "/ws" and not self._same_origin(request):
            return web.Response(status=403, text="tokenstep serve: the websocket takes its own page's connections only\n")
        response = await handler(request)
        if given is not None and isinstance(response, web.Response):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return response

    def _is_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin.split("://", 1)[-1] == request.host

    @aiohttp_jinja2.template("index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        """The page, its addresses taken from the one the browser used (so --host 0.0.0.0 works)."""
        scheme = "wss" if request.secure else "ws"
        return {
            "font_size": server.to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{scheme}://{request.host}/ws",
            "config": {"static": {"url": "/static/"}},
            "application": {"name": self.title},
        }

    async def on_startup(self, app: web.Application) -> None:
        print(self.address(), flush=True)  # a line of its own: a script or a person takes it from there
        print(who_can_reach(self.host, self.port), file=sys.stderr, flush=True)

    async def on_shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(service.stop() for service in list(StoppedApp.running)))


def who_can_reach(host: str, port: int) -> str:
    """Said plainly when the server starts."""
    if host in LOOPBACK:
        return (
            f"tokenstep serve: listening on {host} only: this machine alone can open it "
            f"(from elsewhere: ssh -L {port}:localhost:{port} this-machine). Ctrl+C stops it and every app it started."
        )
    return (
        f"tokenstep serve: listening on {host}: any machine that can reach port {port} here can open the app, "
        "which runs a model as you, if it has the token; keep the address to yourself. Ctrl+C stops it."
    )


def app_command(app_args: list[str]) -> list[str]:
    """The app as each browser session runs it: this tokenstep, with the options given."""
    script = Path(sys.executable).with_name("tokenstep")
    return [*([str(script)] if script.is_file() else [sys.executable, "-m", "tui.cli"]), *app_args]
