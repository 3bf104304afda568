"""17. Reopening a 2,000-token session of the embedded model, to its first candidates.

The path is read in one forward pass (the prompt, then the path's tokens); past steps show their
saved panels. Baseline: what walking it token by token costs, 2,000 times one forward step measured
in the same run (that walk is what reopening did before; --exact-replay still does it).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import PROMPT, Result, load, long_text, seconds, table

TOKENS = 2000


def saved_session(engine, folder: Path) -> Path:
    """A session file whose path is 2,000 tokens of text, each node with a real panel."""
    from decoding import session_file
    from decoding.session import Session

    session = Session(engine)
    session.reset(PROMPT)
    session.step()
    tree = session.tree
    first = tree.nodes[tree.current]
    tree.current = tree.roots[0]
    tree.delete(first.id)
    for token_id in engine.encode(long_text(TOKENS, engine))[:TOKENS]:
        tree.advance(first.token.__class__(**{**vars(first.token), "token_id": token_id}), first.panel, "forced", None)
    path = folder / "session.json"
    session_file.save(path, tree, engine, session.strategy, session.choices)
    return path


def run(engine=None, label: str = "") -> list[Result]:
    from decoding import session_file
    from decoding.session import Session

    engine = engine or load()
    with tempfile.TemporaryDirectory() as folder:
        path = saved_session(engine, Path(folder))

        def reopen() -> None:
            session = Session(engine)
            session.adopt(session_file.load(path).tree)
            assert len(session.path) == TOKENS and session.distribution is not None

        reopened = min(seconds(reopen) for _ in range(2))
    session = Session(engine)
    session.reset(PROMPT)
    step = statistics.median(seconds(lambda: engine.feed([260])) for _ in range(10))
    table(
        f"Reopening a {TOKENS}-token session, seconds{label}",
        ["one pass", "token by token (estimate)", "ratio"],
        [[reopened, TOKENS * step, reopened / (TOKENS * step)]],
    )
    return [Result(f"reopen_2000_tokens_seconds{label}", reopened, "<", 5)]
