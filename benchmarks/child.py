"""Run in a fresh process by the start-up and memory benchmarks: prints `KEY value` lines.

python child.py app   the app, headless: first painted frame, first candidates, peak RSS
python child.py bare  `import torch, transformers` and loading the same weights: time and peak RSS
python child.py steps ENGINE THREADS   tokens/s of one engine's forward steps with that many threads
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from common import PROMPT

SPAWNED_AT = float(os.environ.get("TOKENSTEP_BENCH_T0", time.time()))


def since_spawn() -> float:
    return time.time() - SPAWNED_AT


def peak_rss_mb() -> float:
    """This process's peak resident memory. Read from /proc (VmHWM), not getrusage: Linux carries
    ru_maxrss over from the parent across fork and exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def app() -> None:
    from decoding.engines.registry import LoadOptions
    from tui.app import TokenstepApp

    class TimedApp(TokenstepApp):
        def on_ready(self) -> None:  # sent once the first frame is on screen
            print(f"FIRST_FRAME {since_spawn():.4f}", flush=True)

        def refresh_view(self) -> None:
            super().refresh_view()
            if self.snapshot is not None and self.snapshot.distribution and not first_candidates.is_set():
                print(f"FIRST_CANDIDATES {since_spawn():.4f}", flush=True)
                first_candidates.set()

    first_candidates = asyncio.Event()  # waited on, not polled: polling would compete with the load

    async def run() -> None:
        tui = TimedApp(LoadOptions(device="cpu"), prompt=PROMPT, look_ahead=0)
        async with tui.run_test(size=(120, 36)) as pilot:
            await first_candidates.wait()
            for _ in range(3):
                await pilot.press("space")
            while not tui.idle or len(tui.snapshot.path) < 3:
                await pilot.pause(0.01)

    asyncio.run(run())
    print(f"PEAK_RSS_MB {peak_rss_mb():.1f}")


def bare() -> None:
    import torch
    import transformers

    from decoding.engines.embedded import embedded_gguf
    from decoding.engines.hf.load import converted_gguf

    folder = converted_gguf(embedded_gguf())
    print(f"IMPORTED_RSS_MB {peak_rss_mb():.1f}", flush=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    transformers.AutoTokenizer.from_pretrained(folder)
    print(f"LOADED {since_spawn():.4f}")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"WEIGHTS_MB {weights / 2**20:.1f}")


def steps() -> None:
    import statistics

    engine_name, threads = sys.argv[2], int(sys.argv[3])
    import torch
    from common import load

    torch.set_num_threads(threads)
    if engine_name == "llama":
        from decoding.engines.embedded import embedded_gguf
        from decoding.engines.llama.engine import LlamaCppEngine

        engine = LlamaCppEngine(embedded_gguf(), model_id="embedded", gpu=False, threads=threads)
    else:
        engine = load()
    count = 80 if engine_name == "llama" else 30

    def rate() -> float:
        engine.crop(0)
        engine.feed(engine.encode(PROMPT))
        start = time.perf_counter()
        for offset in range(count):
            engine.feed([260 + offset])
        return count / (time.perf_counter() - start)

    rate()  # warm-up
    print(f"TOKENS_PER_S {statistics.median(rate() for _ in range(3)):.2f}")


if __name__ == "__main__":
    {"app": app, "bare": bare, "steps": steps}[sys.argv[1]]()
