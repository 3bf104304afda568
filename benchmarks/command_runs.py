"""What the command benchmarks share: `tokenstep` run as a user runs it, in a subprocess, and the
`generate()` baseline on the same weights in this process.

Each command's time per token is the difference of two lengths, (T(long) - T(short)) / (long - short),
so that start-up (imports, loading the weights) cancels out; the baseline's is taken the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import seconds

REPO = Path(__file__).resolve().parents[1]
PEAK_RSS = Path(__file__).with_name("peak_rss.py")
LIST_PROMPT = "Here is a very long list of animals, one per line:"  # runs 1,000 greedy steps without an end
MODEL_OPTIONS = ["--device", "cpu", "--dtype", "float32"]  # the baseline's weights, as loaded by common.load()


def tokenstep() -> list[str]:
    """The console script `pip install` made beside this Python (`python -m tui.cli` without one)."""
    script = Path(sys.executable).with_name("tokenstep")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tui.cli"]


def command_env(**extra: str) -> dict[str, str]:
    """This repository's code (not another checkout's editable install), offline, and a data folder of
    its own so that the app's session files never become the user's last session."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    data = tempfile.mkdtemp(prefix="tokenstep-bench-data-")
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENSTEP_DATA": data, **extra}


def run_tokenstep(args: list[str]) -> tuple[float, str]:
    """Seconds the command took from spawn to exit, and its standard output."""
    started = time.perf_counter()
    done = subprocess.run(tokenstep() + args, env=command_env(), capture_output=True, text=True)
    taken = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"tokenstep {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return taken, done.stdout


def peak_rss_kib(args: list[str]) -> tuple[int, str]:
    """The command's peak resident memory from its model's load on (KiB), and its standard output. It
    runs through peak_rss.py, which calls what the console script calls and reads VmHWM just before
    exit (a child's getrusage peak would include this process's: Linux carries it over across fork
    and exec)."""
    done = subprocess.run([sys.executable, str(PEAK_RSS), *args], env=command_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tokenstep {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    last = done.stderr.strip().splitlines()[-1].split()
    assert last[0] == "PEAK_RSS_KIB", done.stderr[-500:]
    return int(last[1]), done.stdout


def generate(engine, prompt_ids: list[int], new_tokens: int, settings: dict, seed: int | None = None) -> list[int]:
    """`generate()` on the engine's own model: the new token ids (seeded as a session seeds its sampler)."""
    import torch

    ids = torch.tensor([prompt_ids], device=engine.model.device)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, **settings)
    return out[0, len(prompt_ids) :].tolist()


def timed_generate(engine, prompt_ids: list[int], new_tokens: int, settings: dict, seed: int | None = None) -> float:
    return seconds(lambda: generate(engine, prompt_ids, new_tokens, settings, seed))


def generation_settings(record: dict, engine) -> dict:
    """The generate() arguments a trace record says it ran with (and the pad token generate() would
    pick itself, said here so that it does not warn at every call)."""
    return {**record["strategy"], "pad_token_id": min(engine.eos_token_ids)}


def kv_bytes_per_token(engine) -> int:
    """The KV cache a token adds, from the model's config: keys and values, every layer, every KV head."""
    config = engine.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(engine.model.parameters()).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element


def per_token(long: float, short: float, tokens: int) -> float:
    return (long - short) / tokens


def ms(value_s: float) -> str:
    return f"{1000 * value_s:.1f} ms"
