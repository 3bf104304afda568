"""`tokenstep serve`: the explorer served to a browser, behind its access token; driven in a real
headless Chromium (Debian's), over the DevTools protocol: the page loads with the token and nothing
else, the app draws its candidates, space steps; without the token the page, its files, the
websocket and downloads are refused; the server stops its apps when it stops."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import servers
from tests.test_hostile import run_cli

CHROMIUM = shutil.which("chromium")
TOKEN = "test-token-0123456789abcdef"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium (.ci/run installs it)"
)


@contextmanager
def serving(model_dir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`tokenstep serve` on a free port of 127.0.0.1 with the tiny model; its address once it listens."""
    port = servers.free_port()
    command = [sys.executable, "-m", "tui.cli", "serve", "--port", str(port), "--token", TOKEN]
    command += ["--model", str(model_dir), "--device", "cpu", *extra]
    data = tempfile.mkdtemp(prefix="tokenstep-serve-data-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENSTEP_DATA": data, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        address = process.stdout.readline().strip()  # the first line: the address, token included
        assert address == f"http://127.0.0.1:{port}/?token={TOKEN}", (address, process.stderr.read() if process.poll() else "")
        yield address, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return 0  # nothing listens there (yet)


def test_without_the_token_nothing_is_served(tiny_model_dir):
    with serving(tiny_model_dir) as (address, _):
        base = address.split("/?")[0]
        for path in ("/", "/?token=wrong-token-0123456789", "/static/js/textual.js", "/download/anything", "/ws"):
            assert status_of(base + path) == 401, path
        with urllib.request.urlopen(address, timeout=10) as response:
            assert response.status == 200
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        token_cookie = cookie.split(";")[0]
        assert status_of(base + "/static/js/textual.js", {"Cookie": token_cookie}) == 200
        socket = {"Cookie": token_cookie, "Connection": "Upgrade", "Upgrade": "websocket", "Origin": "http://evil.example"}
        assert (
            status_of(base + "/ws", {**socket, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
            == 403
        )


def test_it_listens_on_loopback_unless_told_and_says_who_can_reach_it(tiny_model_dir):
    with serving(tiny_model_dir) as (_, process):
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        said = process.stderr.read()
    assert "listening on 127.0.0.1 only" in said and "Traceback" not in said


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--token", "short"], "--token: the access token must be 16 to 256"),
        (["--port", "0"], "--port must be from 1 to 65535"),
        (["--session", "x.json"], "each browser session keeps a session file of its own"),
        (["--temperature", "-1"], "--temperature"),
    ],
)
def test_a_bad_serve_option_is_one_line_before_anything_listens(options, said):
    code, out, err = run_cli("serve", *options)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1 and not out


# --- a real browser -----------------------------------------------------------------------------------

# Recorded in the page before its scripts run: what the app's websocket brings (the terminal's bytes).
RECORDER = """
window.__screen = "";
window.__opened = [];
window.open = (url) => { window.__opened.push(url); };  // a download the app offers, taken here
const Native = window.WebSocket;
window.WebSocket = function (...args) {
  const socket = new Native(...args);
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") window.__screen += new TextDecoder().decode(event.data);
  });
  return socket;
};
window.WebSocket.prototype = Native.prototype;
"""


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands by id, events collected."""

    def __init__(self, socket) -> None:
        self.socket, self.next_id, self.events = socket, 0, []

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.socket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.socket.receive_json(), 30)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def screen(self) -> str:
        result = await self.call("Runtime.evaluate", expression="window.__screen", returnByValue=True)
        return ANSI.sub("", result["result"].get("value", ""))

    async def downloads(self, count: int, seconds: float = 60) -> list[str]:
        """What the first `count` downloads the page was offered hold, fetched as the page would."""
        fetch = "Promise.all(window.__opened.map(url => fetch(url).then(r => r.status + ' ' + r.url.split('?')[0]).then(x => x)))"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = await self.call("Runtime.evaluate", expression="window.__opened.length", returnByValue=True)
            if result["result"]["value"] >= count:
                got = await self.call("Runtime.evaluate", expression=fetch, awaitPromise=True, returnByValue=True)
                return got["result"]["value"]
            await asyncio.sleep(0.25)
        raise AssertionError("the export was not offered as downloads")

    async def wait_for(self, text: str, seconds: float = 90) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            screen = await self.screen()
            if text in screen:
                return screen
            await asyncio.sleep(0.25)
        raise AssertionError(f"{text!r} never reached the page; it got:\n{(await self.screen())[-2000:]}")


@contextmanager
def chromium() -> Iterator[int]:
    """Headless Chromium with its DevTools on a port of 127.0.0.1 (flags as a closed network needs)."""
    port = servers.free_port()
    profile = tempfile.mkdtemp(prefix="tokenstep-chromium-")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions"]
    process = subprocess.Popen(
        [CHROMIUM, *flags, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status_of(f"http://127.0.0.1:{port}/json/version") != 200:
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = set(), [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


async def drive(devtools_port: int, address: str) -> tuple[str, str, list[str], list[str]]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            page = next(target for target in await response.json() if target["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            tools = DevTools(socket)
            await tools.call("Network.enable")
            await tools.call("Page.enable")
            await tools.call("Page.addScriptToEvaluateOnNewDocument", source=RECORDER)
            await tools.call("Page.navigate", url=address)
            first = await tools.wait_for("logprob")  # the candidate panel's header: the app runs
            await tools.call("Runtime.evaluate", expression="document.querySelector('.xterm-helper-textarea').focus()")
            await tools.call("Input.dispatchKeyEvent", type="keyDown", key=" ", code="Space", text=" ", windowsVirtualKeyCode=32)
            await tools.call("Input.dispatchKeyEvent", type="keyUp", key=" ", code="Space", windowsVirtualKeyCode=32)
            stepped = await tools.wait_for("step 1 │ last p=")  # one step: the status line now says what it chose
            await tools.call("Input.dispatchKeyEvent", type="keyDown", key="e", code="KeyE", text="e", windowsVirtualKeyCode=69)
            await tools.call("Input.dispatchKeyEvent", type="keyUp", key="e", code="KeyE", windowsVirtualKeyCode=69)
            downloads = await tools.downloads(3)  # the export's JSON, CSV and Markdown
            requested = [
                event["params"]["request"]["url"] for event in tools.events if event.get("method") == "Network.requestWillBeSent"
            ]
            requested += [event["params"]["url"] for event in tools.events if event.get("method") == "Network.webSocketCreated"]
            return first, stepped, requested, downloads


@needs_chromium
def test_the_app_runs_in_headless_chromium_and_nothing_leaves_the_machine(tiny_model_dir):
    with serving(tiny_model_dir, "--strategy", "sample") as (address, server):
        with chromium() as devtools:
            first, stepped, requested, downloads = asyncio.run(drive(devtools, address))
            apps = descendants(server.pid)
            assert apps, "each browser session runs an app process of its own"
        assert "logprob" in first and "step 0" in first and "step 2" not in stepped
        origin = address.split("/?")[0]
        assert requested and all(url.startswith((origin, origin.replace("http", "ws"), "data:")) for url in requested), requested
        assert any("/ws?" in url for url in requested)  # the app's websocket, on this server too
        assert [line.split()[0] for line in downloads] == ["200"] * 3 and all("/download/" in line for line in downloads)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert all(not Path(f"/proc/{pid}").exists() for pid in apps), "the server stops the apps it started"
