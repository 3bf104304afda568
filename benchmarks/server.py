"""10. Models on a server: stepping through llama-server against the in-process llama.cpp engine on the
same GGUF; through vLLM against the same request sent by a bare HTTP client; undo; a pick after work
ahead. Each server is started here on 127.0.0.1 (`make bench` builds and installs them once)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from common import PROMPT, Result, seconds, table

from tests import servers

STEPS = 48


def step_rate(engine) -> float:
    from decoding.search.session import Session

    session = Session(engine)
    session.reset(PROMPT)
    session.step()  # warm-up: the server caches the prompt
    start = time.perf_counter()
    for _ in range(STEPS):
        session.step()
    return STEPS / (time.perf_counter() - start)


def llama_results(binary: str) -> list[Result]:
    from decoding.engines.embedded import embedded_gguf
    from decoding.engines.llama.engine import default_threads
    from decoding.engines.registry import LoadOptions, load_engine

    port = servers.free_port()
    command = servers.llama_server_command(binary, embedded_gguf(), port, default_threads())
    with servers.running(command, f"http://127.0.0.1:{port}", "bench-llama-server", 120) as url:
        served = load_engine(LoadOptions(engine="server", url=url))
        local = load_engine(LoadOptions(engine="llama"))
        rates = {"server": [], "local": []}
        for _ in range(3):  # in turn, so that drifts in machine speed hit both alike
            rates["server"].append(step_rate(served))
            rates["local"].append(step_rate(local))
        server_rate, local_rate = max(rates["server"]), max(rates["local"])
        undo, step = undo_and_step(served)
        pick = asyncio.run(pick_latency(url))
    table(
        "llama-server on loopback",
        ["server tok/s", "in-process llama.cpp tok/s", "ratio"],
        [[server_rate, local_rate, server_rate / local_rate]],
    )
    table(
        "Undo and a pick after work ahead (llama-server)",
        ["undo ms", "step ms", "pick ms"],
        [[1000 * undo, 1000 * step, 1000 * pick]],
    )
    return [
        Result(
            "server_llama_rate",
            server_rate / local_rate,
            ">=",
            0.7,
            measured=f"stepping llama-server on loopback: {server_rate:.0f} tok/s",
            baseline=f"in-process llama.cpp: {local_rate:.0f} tok/s",
        ),
        Result(
            "server_undo",
            undo / step,
            "<",
            0.2,
            measured=f"undo on llama-server: {1000 * undo:.1f} ms",
            baseline=f"a step: {1000 * step:.1f} ms",
        ),
        Result("server_pick_ms", 1000 * pick, "<", 16, measured=f"a pick after work ahead on llama-server: {1000 * pick:.1f} ms"),
    ]


def undo_and_step(engine) -> tuple[float, float]:
    from decoding.search.session import Session

    session = Session(engine)
    session.reset(PROMPT)
    steps, undos = [], []
    for _ in range(10):
        steps.append(seconds(session.step))
        undos.append(seconds(session.undo))
    return statistics.median(undos), statistics.median(steps)


async def pick_latency(url: str) -> float:
    """Keypress to painted panel for picks among rows 1-5, each after the work ahead is done."""
    from app_play import until_idle
    from textual import on

    from decoding.engines.registry import LoadOptions
    from tui.app import TokenstepApp
    from tui.messages import CommandDone

    class TimedApp(TokenstepApp):
        picked_at = 0.0
        latencies: list[float] = []

        def action_pick(self, row: int) -> None:
            self.picked_at = time.perf_counter()
            super().action_pick(row)

        def refresh_view(self) -> None:
            super().refresh_view()
            if self.picked_at:
                self.latencies.append(time.perf_counter() - self.picked_at)
                self.picked_at = 0.0

        @on(CommandDone)
        def _timed_done(self) -> None:
            self.changed.set()

    app = TimedApp(LoadOptions(engine="server", url=url), prompt=PROMPT, look_ahead=5)
    app.changed = asyncio.Event()
    async with app.run_test(size=(120, 36)) as pilot:
        for row in (1, 2, 3, 4, 5, 1, 2, 3, 4, 5):
            await until_idle(app)
            await pilot.press(str(row))
        await until_idle(app)
    return statistics.median(app.latencies)


def vllm_results(python: str) -> list[Result]:
    from decoding.engines.embedded import embedded_gguf
    from decoding.engines.hf.load import converted_gguf
    from decoding.engines.registry import LoadOptions, load_engine

    port = servers.free_port()
    with servers.running(
        servers.vllm_command(python, converted_gguf(embedded_gguf()), port),
        f"http://127.0.0.1:{port}",
        "bench-vllm",
        600,
        servers.VLLM_ENV,
    ) as url:
        served = load_engine(LoadOptions(engine="server", url=url))
        ids = served.encode(PROMPT)
        body = {
            "model": served.model_id,
            "max_tokens": 1,
            "logprobs": served.top,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
        }
        servers.post(url, "/v1/completions", {**body, "prompt": ids})  # warm-up
        ours, bare = [], []
        for _ in range(3):
            ours.append(1 / step_rate(served))
            bare.append(seconds_per_bare_step(url, body, ids))
    step, request = min(ours), min(bare)
    table(
        "vLLM on loopback: time per step",
        ["tokenstep ms", "bare HTTP request ms", "ratio"],
        [[1000 * step, 1000 * request, step / request]],
    )
    return [
        Result(
            "server_vllm_overhead",
            step / request,
            "<",
            1.1,
            measured=f"a step on vLLM on loopback: {1000 * step:.1f} ms",
            baseline=f"the bare HTTP request: {1000 * request:.1f} ms",
        )
    ]


def seconds_per_bare_step(url: str, body: dict, ids: list[int]) -> float:
    """The same requests, one token further each time, from urllib with no tokenstep around them."""
    sequence = list(ids)
    start = time.perf_counter()
    for _ in range(STEPS):
        answer = servers.post(url, "/v1/completions", {**body, "prompt": sequence})
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        sequence.append(int(max(top, key=top.get).split(":")[1]))
    return (time.perf_counter() - start) / STEPS


def run() -> list[Result]:
    results = []
    if binary := os.environ.get("LLAMA_SERVER"):
        results += llama_results(binary)
    else:
        print("\n## Servers: $LLAMA_SERVER not set (make bench builds llama-server), skipped")
    if python := os.environ.get("VLLM_PYTHON"):
        results += vllm_results(python)
    else:
        print("\n## Servers: $VLLM_PYTHON not set (make bench installs vLLM), skipped")
    return results
