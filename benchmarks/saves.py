"""17. Saving the session after every step, with 100 and with 10,000 nodes in the tree.

A save appends one line with what the step changed (and now and then folds the lines into one), so
its cost should not grow with the tree. Baseline: the same saves with 100 nodes, in the same run.
Also printed: writing the whole file at 10,000 nodes, what every save cost before.
"""

from __future__ import annotations

import statistics
import tempfile
from functools import partial
from pathlib import Path

from common import PROMPT, Result, load, seconds, table

SAVES = 400


def grown_tree(engine, nodes: int):
    """A session whose tree has `nodes` nodes: branches 40 deep, with a real step's token and panel."""
    from decoding.search.session import Session

    session = Session(engine)
    session.reset(PROMPT)
    session.step()
    tree = session.tree
    while len(tree.nodes) < nodes:
        grow(tree)
    return session


def grow(tree) -> None:
    """One more node: the next step of a path, or a new branch once the path is 40 deep."""
    node = tree.nodes[tree.current]
    if len(tree.path(tree.current)) > 40 or node.token is None:
        tree.current = next(iter(tree.nodes[tree.roots[0]].children))
        node = tree.nodes[tree.current]
    token_id = (len(tree.nodes) * 7919) % 49152
    tree.advance(node.token.__class__(**{**vars(node.token), "token_id": token_id}), node.panel, "forced", None)


def seconds_a_save(engine, sizes: tuple[int, ...], folder: Path) -> list[float]:
    """The median seconds a save takes for each tree size, the trees saved in turns (so that a slow
    spell of the machine falls on all of them alike)."""
    from decoding.records import session_file

    sessions = [grown_tree(engine, nodes) for nodes in sizes]
    writers = [session_file.SessionWriter(folder / f"{nodes}.json", engine) for nodes in sizes]
    taken: list[list[float]] = [[] for _ in sizes]
    for session, writer in zip(sessions, writers):
        writer.save(session.tree, session.strategy, session.choices)  # the first save writes the whole file
    for _ in range(SAVES):
        for session, writer, times in zip(sessions, writers, taken):
            grow(session.tree)
            times.append(seconds(partial(writer.save, session.tree, session.strategy, session.choices)))
    return [statistics.median(times) for times in taken]  # a save's own cost, not the heap's collections


def run() -> list[Result]:
    from decoding.records import session_file

    engine = load()
    with tempfile.TemporaryDirectory() as folder:
        small, large = seconds_a_save(engine, (100, 10_000), Path(folder))
        session = grown_tree(engine, 10_000)
        whole = seconds(lambda: session_file.save(Path(folder) / "whole.json", session.tree, engine, session.strategy, 10))
    table(
        "Session saves, ms a save",
        ["100 nodes", "10,000 nodes", "ratio", "whole file at 10,000 (before)"],
        [[1000 * small, 1000 * large, large / small, 1000 * whole]],
    )
    return [
        Result(
            "save_10000_vs_100_nodes",
            large / small,
            "<",
            1.5,
            measured=f"a session save, 10,000 nodes: {1000 * large:.3f} ms (the whole file: {1000 * whole:.0f} ms)",
            baseline=f"the same with 100 nodes: {1000 * small:.3f} ms",
        )
    ]
