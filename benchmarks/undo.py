"""3. undo() at 1,000 tokens of context against one forward step."""

from __future__ import annotations

import statistics

from common import Result, load, long_text, seconds, table


def run() -> list[Result]:
    from decoding.search.session import Session

    engine = load()
    session = Session(engine)
    session.reset(long_text(1000, engine))
    steps, undos = [], []
    for _ in range(10):
        steps.append(seconds(session.step))
        undos.append(seconds(session.undo))
    step, undo = statistics.median(steps), statistics.median(undos)
    table("Undo at 1,000 tokens", ["undo ms", "forward step ms", "ratio"], [[1000 * undo, 1000 * step, undo / step]])
    return [
        Result(
            "undo_1000",
            undo / step,
            "<",
            0.1,
            measured=f"undo at 1,000 tokens: {1000 * undo:.2f} ms",
            baseline=f"a forward step: {1000 * step:.1f} ms",
        )
    ]
