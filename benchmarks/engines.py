"""7. The stepping benchmark through each engine, against llama.cpp's own eval loop on the same GGUF."""

from __future__ import annotations

import os

import numpy as np
from common import PROMPT, Result, load, seconds, table
from stepping import NEW_TOKENS, play_loop

ROUNDS = 8  # llama.cpp's speed here varies by ~10% from run to run: alternate, keep the best of each


def llama_own_loop():
    from llama_cpp import Llama

    from decoding.engines.embedded import embedded_gguf

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)

    def loop() -> None:
        llm.reset()
        llm.eval(prompt)
        for _ in range(NEW_TOKENS):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(logits))])

    return loop


def session_loop(**options):
    from decoding.search.session import Session

    session = Session(load(**options))
    return lambda: play_loop(session, PROMPT)


def tokens_per_second(*loops) -> list[float]:
    """Each loop's best speed, the loops run in turn so that drifts in machine speed hit all alike."""
    for loop in loops:
        loop()  # warm-up
    times = [[] for _ in loops]
    for _ in range(ROUNDS):
        for index, loop in enumerate(loops):
            times[index].append(seconds(loop))
    return [NEW_TOKENS / min(column) for column in times]


def run() -> list[Result]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("\n## Engines: llama-cpp-python is not installed (make test installs it); skipped")
        return []
    ours, baseline = tokens_per_second(session_loop(engine="llama"), llama_own_loop())
    slow = {"transformers float32": {"dtype": "float32"}, "transformers bfloat16": {"dtype": "bfloat16"}}
    rows = [
        [name, speed, speed / baseline] for name, speed in ((n, tokens_per_second(session_loop(**o))[0]) for n, o in slow.items())
    ]
    rows += [["llama.cpp (Q4_1)", ours, ours / baseline], ["llama.cpp's own eval loop", baseline, 1.0]]
    table("Engines: tokens/s of the play loop, 64 tokens", ["engine", "tok/s", "vs llama.cpp loop"], rows)
    return [
        Result(
            "llama_engine",
            ours / baseline,
            ">=",
            0.9,
            measured=f"the play loop on the llama.cpp engine: {ours:.0f} tok/s",
            baseline=f"llama.cpp's own eval loop: {baseline:.0f} tok/s",
        )
    ]
