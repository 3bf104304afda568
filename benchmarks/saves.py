"""17. Saving the session after every step, with 100 and with 10,000 nodes in the tree.

A save appends one line with what the step changed (and now and then folds the lines into one), so
its cost should not grow with the tree. Baseline: the same saves with 100 nodes, in the same run.
Also printed: writing the whole file at 10,000 nodes, what every save cost before.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import PROMPT, Result, load, seconds, table

SAVES = 400


def grown_tree(engine, nodes: int):
    """A session whose tree has `nodes` nodes: branches 40 deep, with a real step's token and panel."""
    from decoding.session import Session

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


def seconds_a_save(engine, nodes: int, folder: Path) -> float:
    from decoding import session_file

    session = grown_tree(engine, nodes)
    writer = session_file.SessionWriter(folder / f"{nodes}.json", engine)
    writer.save(session.tree, session.strategy, session.choices)  # the first save writes the whole file
    total = 0.0
    for _ in range(SAVES):
        grow(session.tree)
        total += seconds(lambda: writer.save(session.tree, session.strategy, session.choices))
    return total / SAVES


def run() -> list[Result]:
    from decoding import session_file

    engine = load()
    with tempfile.TemporaryDirectory() as folder:
        small, large = seconds_a_save(engine, 100, Path(folder)), seconds_a_save(engine, 10_000, Path(folder))
        session = grown_tree(engine, 10_000)
        whole = seconds(lambda: session_file.save(Path(folder) / "whole.json", session.tree, engine, session.strategy, 10))
    table(
        "Session saves, ms a save",
        ["100 nodes", "10,000 nodes", "ratio", "whole file at 10,000 (before)"],
        [[1000 * small, 1000 * large, large / small, 1000 * whole]],
    )
    return [Result("save_10000_vs_100_nodes", large / small, "<", 1.5)]
