"""17. Reopening a 2,000-token session of the embedded model, to its first candidates.

The path is read in one forward pass (the prompt, then the path's tokens); past steps show their
saved panels. Baseline, in the same run: reopening it token by token, the walk reopening did before
and `--exact-replay` still does (each step's context grows to 2,000 tokens, so one short-context
step times 2,000 would understate it). The issue's target, < 5 s where that walk took ~110 s, is
the ratio < 5 / 110: this machine's speed swings by tens of percent from hour to hour, and both
sides swing with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import PROMPT, Result, load, long_text, seconds, stolen_share_while, table

TOKENS = 2000
TARGET_RATIO = 5 / 110  # the 5 s, where the token-by-token walk took ~110 s


def saved_session(engine, folder: Path) -> Path:
    """A session file whose path is 2,000 tokens of text, each node with a real panel."""
    from decoding.records import session_file
    from decoding.search.session import Session

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
    from decoding.records import session_file
    from decoding.search.session import Session

    engine = engine or load()
    with tempfile.TemporaryDirectory() as folder:
        path = saved_session(engine, Path(folder))

        sessions = {}

        def reopen(exact_replay: bool = False) -> None:
            session = Session(engine)
            session.exact_replay = exact_replay
            session.adopt(session_file.load(path).tree)
            assert len(session.path) == TOKENS and session.distribution is not None
            sessions[exact_replay] = session

        times: list[float] = []  # one pass, the walk, one pass again: a slow spell falls on both
        stolen = stolen_share_while(
            lambda: times.extend([seconds(reopen), seconds(lambda: reopen(exact_replay=True)), seconds(reopen)])
        )
    reopened, walked = min(times[0], times[2]), times[1]
    table(
        f"Reopening a {TOKENS}-token session, seconds{label}",
        ["one pass", "token by token", "ratio", "target (5 s of ~110 s)", "CPU stolen by the host meanwhile"],
        [[reopened, walked, reopened / walked, f"< {TARGET_RATIO:.3f}", f"{stolen:.0%}"]],
    )
    one_pass, walk = sessions[False].next, sessions[True].next
    top_ten = [candidate.token_id for candidate in walk.distribution.candidates[:10]]
    largest = float((one_pass.logprobs - walk.logprobs).abs().max())
    among_top = float((one_pass.logprobs[top_ten] - walk.logprobs[top_ten]).abs().max())
    same_order = top_ten == [candidate.token_id for candidate in one_pass.distribution.candidates[:10]]
    table(
        f"The next token's log-probabilities after the {TOKENS} tokens: one pass against the walk{label}",
        ["largest difference", "among the walk's top 10", "same top 10, same order"],
        [[largest, among_top, str(same_order)]],
    )
    return [
        Result(
            f"reopen_2000_tokens_vs_token_by_token{label}",
            reopened / walked,
            "<",
            TARGET_RATIO,
            measured=f"reopening a {TOKENS}-token session{label}: {reopened:.2f} s",
            baseline=f"reopening it token by token (`--exact-replay`): {walked:.0f} s",
        ),
        Result(
            f"reopen_logprob_difference{label}",
            largest,
            "",
            measured=f"the next token's log-probabilities after one pass: {among_top:.2g} at most among the top 10"
            f" ({'the same top 10 in the same order' if same_order else 'another top 10 or order'})",
            baseline="after the token-by-token walk (the ratio column: the largest difference over the vocabulary)",
        ),
    ]
