"""The exploration tree: branches, siblings, jumps that restore exact distributions, and session files."""

import json
import os
from dataclasses import replace

import pytest

from decoding.core.errors import SessionError
from decoding.core.settings import Strategy
from decoding.records import session_file
from decoding.search.session import Session


def test_undo_keeps_the_branch_and_another_choice_opens_a_sibling(tiny_session):
    tree = tiny_session.tree
    tiny_session.step()
    first = tiny_session.step()
    tiny_session.undo()
    tiny_session.force(tiny_session.distribution.candidates[3].token_id)
    parent = tree.nodes[tree.nodes[tree.current].parent]
    assert len(parent.children) == 2 and tree.nodes[parent.children[0]].token.token_id == first.token_id
    assert tree.nodes[tree.current].made_by == "forced" and tree.nodes[parent.children[0]].made_by == "greedy"
    tiny_session.undo()
    tiny_session.step()  # the greedy choice again: back into the first branch, no new node
    assert len(parent.children) == 2 and tree.current == parent.children[0]


def test_branches_show_each_run_since_its_fork(tiny_session):
    tiny_session.step()
    tiny_session.step()
    tiny_session.undo()
    tiny_session.force(tiny_session.distribution.candidates[1].token_id)
    rows = tiny_session.tree.branches()
    assert [row.level for row in rows] == [0, 1, 2, 2]
    assert rows[0].text == tiny_session.prompt.text and rows[1].on_path and rows[3].current
    assert rows[3].logprob == pytest.approx(tiny_session.sequence_logprob)
    assert rows[3].made_by == "forced" and rows[2].made_by == "greedy"


def test_siblings_wrap_around_and_a_new_prompt_is_a_new_root(tiny_session):
    tree = tiny_session.tree
    tiny_session.step()
    a = tree.current
    tiny_session.undo()
    tiny_session.force(tiny_session.distribution.candidates[2].token_id)
    b = tree.current
    assert tree.sibling(a, 1) == b and tree.sibling(b, 1) == a and tree.sibling(a, -1) == b
    old_root = tree.roots[0]
    tiny_session.reset("a different prompt")
    assert tree.roots == [old_root, tree.current] and len(tree.nodes[old_root].children) == 2


def assert_same_within_rounding(ours, theirs):
    """Two panels of the same position, one read in one pass: the same candidates in the same order,
    probabilities within the tolerance docs/sessions.md gives."""
    assert [c.token_id for c in ours.candidates] == [c.token_id for c in theirs.candidates]
    assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(ours.candidates, theirs.candidates))


@pytest.mark.parametrize("exact_replay", [True, False])
def test_jump_restores_the_distribution_and_path(tiny_engine, exact_replay):
    """Token by token (--exact-replay) the distribution is the same to the bit; in one pass, within rounding."""
    session = Session(tiny_engine, Strategy(kind="sample", temperature=0.9, seed=5))
    session.exact_replay = exact_replay
    session.reset("hello world")
    for _ in range(4):
        session.step()
    here, path, distribution = session.tree.current, session.path, session.distribution
    next_token = Session(tiny_engine, Strategy(kind="sample", temperature=0.9, seed=5))
    next_token.reset("hello world")
    for _ in range(5):
        next_token.step()
    session.undo()
    session.undo()
    session.force(session.distribution.candidates[4].token_id)
    session.reset("another prompt entirely")
    session.step()
    session.jump(here)
    assert session.path == path and session.tree.current == here
    if exact_replay:
        assert session.distribution == distribution
    else:
        assert_same_within_rounding(session.distribution, distribution)
    assert session.step().token_id == next_token.path[-1].token_id  # the sampler is where it was too


def test_session_file_round_trip_gives_the_same_tree_and_next_distribution(tiny_engine, tmp_path):
    strategy = Strategy(kind="sample", top_k=20, seed=2)
    session = Session(tiny_engine, strategy, choices=6)
    session.reset("hello world")
    for _ in range(3):
        session.step()
    session.undo()
    session.force(session.distribution.candidates[5].token_id)
    path = tmp_path / "s.json"
    session_file.save(path, session.tree, tiny_engine, strategy, 6)
    saved = session_file.load(path)
    assert session_file.tree_record(saved.tree) == session_file.tree_record(session.tree)
    assert saved.strategy == strategy and saved.choices == 6 and session_file.same_model(saved.model, tiny_engine)
    reopened = Session(tiny_engine.fork(), saved.strategy, saved.choices)
    reopened.adopt(saved.tree)
    assert reopened.path == session.path
    assert_same_within_rounding(reopened.distribution, session.distribution)
    assert reopened.step().token_id == session.step().token_id


def test_a_reopened_session_shows_what_the_chain_kept_at_every_past_step(tiny_engine, tmp_path):
    session = Session(tiny_engine, Strategy(kind="sample", top_k=20, min_p=0.02, seed=2))
    session.reset("hello world")
    for _ in range(3):
        session.step()
    path = tmp_path / "s.json"
    session_file.save(path, session.tree, tiny_engine, session.strategy, 10)
    reopened = Session(tiny_engine.fork(), session.strategy)
    reopened.adopt(session_file.load(path).tree)
    for before, after in zip(session.panels, reopened.panels):
        assert (after.kept, after.vocab_size) == (before.kept, before.vocab_size) and after.kept is not None
        assert after.kept_mass == pytest.approx(before.kept_mass)


def test_an_interrupted_write_leaves_the_old_file_whole(tiny_session, tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    session_file.save(path, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    before = path.read_bytes()
    tiny_session.step()

    def killed(*args):
        raise KeyboardInterrupt  # as if the process died between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        session_file.save(path, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"format": "tokenstep-session", "version": 1, "tree": {', "not a tokenstep session: not valid JSON"),
        ('{"name": "something else"}', "not a tokenstep session file"),
        (
            '{"format": "tokenstep-session", "version": 1, "model": {}, "strategy": {}, "choices": 5, "tree": {"roots": [0], "current": 3, "nodes": []}}',
            "damaged",
        ),
        ("\xff\xfe garbage", "is not a tokenstep session: not UTF-8 text"),
    ],
)
def test_a_damaged_or_foreign_file_is_refused_and_left_untouched(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(SessionError, match=message):
        session_file.load(path)
    assert path.read_bytes() == content.encode("latin-1")


def test_a_file_from_another_model_is_recognised(tiny_session, tmp_path):
    path = tmp_path / "s.json"
    session_file.save(path, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    record = json.loads(path.read_text())
    record["model"]["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(record))
    assert not session_file.same_model(session_file.load(path).model, tiny_session.engine)


def test_only_a_deleted_branch_is_lost_and_never_the_current_path(tiny_session, tmp_path):
    tiny_session.step()
    tiny_session.step()
    keep = tiny_session.tree.current
    tiny_session.undo()
    tiny_session.undo()
    tiny_session.force(tiny_session.distribution.candidates[3].token_id)
    tiny_session.step()
    doomed = tiny_session.tree.nodes[tiny_session.tree.current].parent
    tiny_session.jump(keep)
    with pytest.raises(ValueError):
        tiny_session.tree.delete(tiny_session.tree.nodes[keep].parent)
    tiny_session.tree.delete(doomed)
    assert len(tiny_session.tree.nodes) == 3 and tiny_session.tree.current == keep
    tiny_session.undo()
    tiny_session.force(tiny_session.distribution.candidates[2].token_id)  # new ids never reuse old ones
    assert len(set(tiny_session.tree.nodes)) == 4
    path = tmp_path / "s.json"
    session_file.save(path, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    assert session_file.tree_record(session_file.load(path).tree) == session_file.tree_record(tiny_session.tree)


def test_branch_text_shows_whole_characters_and_bytes_still_waiting():
    from decoding.core.state import PathToken
    from decoding.search.tree import Tree

    def token(token_id, raw, piece):
        return PathToken(token_id, f"<0x{raw[0]:02X}>" if not piece else piece, 0.5, -0.7, 0, False, raw=raw, piece=piece)

    tree = Tree()
    tree.add_root("p", [1])
    tree.advance(token(2, b"\xc3", ""), None, "greedy", None)  # the first byte of é
    tree.advance(token(3, b"\xa9", "é"), None, "greedy", None)
    tree.advance(token(4, b"\xe2", ""), None, "greedy", None)  # waits for the rest of its character
    assert tree.branches()[1].text == "é<0xE2>"


# --- session files that grow by a line a save -------------------------------------------------------


def lines_of(path):
    return path.read_text().splitlines()


def assert_same_saved(first, second):
    """Two saved sessions hold the same tree, place on it and settings."""
    a, b = session_file.load(first), session_file.load(second)
    assert a.tree.roots == b.tree.roots and a.tree.current == b.tree.current
    assert a.tree.nodes == b.tree.nodes and (a.strategy, a.choices) == (b.strategy, b.choices)


def test_a_save_after_a_step_appends_one_line_and_reopens_as_a_whole_save_would(tiny_session, tmp_path):
    path, whole = tmp_path / "s.json", tmp_path / "whole.json"
    writer = session_file.SessionWriter(path, tiny_session.engine)
    writer.save(tiny_session.tree, Strategy(), 10)
    for change in ("step", "step", "undo", "force", "delete", "settings"):
        if change == "step":
            tiny_session.step()
        elif change == "undo":
            tiny_session.undo()
        elif change == "force":
            tiny_session.force(tiny_session.distribution.candidates[2].token_id)
        elif change == "delete":
            tree = tiny_session.tree
            tree.delete(tree.nodes[tree.nodes[tree.current].parent].children[0])  # the first branch
        strategy = Strategy(kind="sample", seed=7) if change == "settings" else Strategy()
        before = path.read_bytes()
        writer.save(tiny_session.tree, strategy, 10)
        after = path.read_bytes()
        assert after.startswith(before) and after[len(before) :].count(b"\n") == 1  # appended: one line
        session_file.save(whole, tiny_session.tree, tiny_session.engine, strategy, 10)
        assert_same_saved(path, whole)
    assert len(lines_of(path)) == 7


def test_appended_lines_are_folded_into_one_once_they_outweigh_it(tiny_session, tmp_path, monkeypatch):
    monkeypatch.setattr(session_file, "COMPACT_AFTER_BYTES", 0)
    path, whole = tmp_path / "s.json", tmp_path / "whole.json"
    writer = session_file.SessionWriter(path, tiny_session.engine)
    counts = []
    for _ in range(16):
        writer.save(tiny_session.tree, Strategy(), 10)
        session_file.save(whole, tiny_session.tree, tiny_session.engine, Strategy(), 10)
        counts.append(len(lines_of(path)))
        last_line = len(path.read_bytes().splitlines()[-1])
        assert path.stat().st_size <= 2 * whole.stat().st_size + last_line  # never much more than a whole save
        tiny_session.step()
    assert counts[0] == 1 and counts[1:].count(1) >= 2  # folded into one line again and again
    writer.save(tiny_session.tree, Strategy(), 10)
    session_file.save(whole, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    assert_same_saved(path, whole)


def test_a_save_cut_short_is_left_out_and_a_damaged_line_refused(tiny_session, tmp_path):
    path = tmp_path / "s.json"
    writer = session_file.SessionWriter(path, tiny_session.engine)
    writer.save(tiny_session.tree, Strategy(), 10)
    tiny_session.step()
    writer.save(tiny_session.tree, Strategy(), 10)
    saved_once = session_file.load(path).tree
    tiny_session.step()
    writer.save(tiny_session.tree, Strategy(), 10)
    whole = path.read_bytes()
    first, second, third = whole.splitlines(keepends=True)
    for cut in (1, len(third) // 2, len(third) - 1):  # killed while writing the third line
        path.write_bytes(first + second + third[:cut])
        assert session_file.load(path).tree.nodes == saved_once.nodes
    path.write_bytes(first + b'{"nodes": [\n' + third)
    with pytest.raises(SessionError, match="line 2: not valid JSON"):
        session_file.load(path)
    path.write_bytes(first + b'{"nodes": [], "gone": [], "roots": [0], "current": 99, "strategy": {}, "choices": 10}\n')
    with pytest.raises(SessionError, match="the current node 99 is missing"):
        session_file.load(path)
    assert path.read_bytes().endswith(b'"choices": 10}\n')  # only read


KILLED_WRITER = """
import sys
from decoding.records import session_file
from decoding.engines.registry import LoadOptions, load_engine
from decoding.search.session import Session
from decoding.core.settings import Strategy

session = Session(load_engine(LoadOptions(model=sys.argv[1], device="cpu")))
session.reset("hello world")
session.step()
tree = session.tree
token, panel = tree.nodes[tree.current].token, tree.nodes[tree.current].panel

def grow():  # a new node: branches 40 deep, each one forking from the root's first child
    if len(tree.path(tree.current)) > 40:
        tree.current = tree.roots[0]
    token_id = len(tree.nodes) % session.engine.vocab_size  # a new node, or now and then an old one again
    tree.advance(token.__class__(**{**vars(token), "token_id": token_id}), panel, "forced", None)

while len(tree.nodes) < int(sys.argv[3]):
    grow()
writer = session_file.SessionWriter(sys.argv[2], session.engine)
saves = 0
while True:
    writer.save(tree, Strategy(), 10)
    print(len(tree.nodes), flush=True)  # saved: this many nodes
    saves += 1
    if saves % 25 == 0:  # a writer of its own writes the file whole: kills land there too
        writer = session_file.SessionWriter(sys.argv[2], session.engine)
    grow()
"""


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [10_000])
def test_a_kill_at_any_moment_loses_at_most_the_save_in_flight(tiny_model_dir, tmp_path, nodes):
    import random
    import signal
    import subprocess
    import sys

    path = tmp_path / "s.json"
    chance = random.Random(nodes)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(tiny_model_dir), str(path), str(nodes)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        said, stop_after = [], chance.randint(1, 120)  # the node counts it said it saved
        for line in child.stdout:
            said.append(line)
            if len(said) == stop_after:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        saved = int([*said, *child.stdout.read().split()][-1])  # the last save it said it made
        child.stdout.close()
        held = len(session_file.load(path).tree.nodes)
        assert saved <= held <= saved + 1  # every save made is there; one more if it was killed before saying so


@pytest.mark.parametrize("prompt", ["hello world", "hello world, " * 2])
def test_a_reopened_path_is_read_in_one_pass_and_agrees_with_a_token_by_token_walk(tiny_engine, tmp_path, prompt):
    """Reopening feeds the prompt and then the whole path at once (with the prompt again when that
    is shorter: the causal fast path); past steps show their saved panels, the next scores equal a
    token-by-token walk's within the tolerance docs/sessions.md gives, and the sampler goes on as it would have;
    so do the scores of steps undone into (from the cache the pass filled)."""
    from decoding.search.session import FULL_STEPS_KEPT

    strategy = Strategy(kind="sample", seed=11, top_k=30)
    made = Session(tiny_engine, strategy)
    made.reset(prompt)
    for index in range(20):
        made.force(made.distribution.candidates[2].token_id) if index % 7 == 3 else made.step()
    path = tmp_path / "s.json"
    session_file.save(path, made.tree, tiny_engine, strategy, 10)
    saved = session_file.load(path)

    fast, exact = Session(tiny_engine.fork(), strategy), Session(tiny_engine.fork(), strategy)
    exact.exact_replay = True
    feeds = []
    feed = fast.engine.feed
    fast.engine.feed = lambda ids: feeds.append(len(ids)) or feed(ids)
    fast.adopt(saved.tree)
    exact.adopt(session_file.load(path).tree)
    prompt_length = len(made.prompt_ids)
    path_pass = prompt_length + 20 if prompt_length < 20 else 20  # the prompt again only when shorter
    assert feeds == [prompt_length, path_pass]  # the prompt, then the whole path in one pass
    assert fast.path == exact.path == made.path and fast.panels == made.panels
    difference = (fast.next.logprobs - exact.next.logprobs).abs().max()
    assert difference < 1e-4  # docs/sessions.md: "within 1e-4"
    assert [c.token_id for c in fast.distribution.candidates] == [c.token_id for c in exact.distribution.candidates]
    assert [fast.step().token_id for _ in range(5)] == [exact.step().token_id for _ in range(5)]
    for _ in range(5 + FULL_STEPS_KEPT + 3):  # into the steps read in one pass: their scores made again
        fast.undo(), exact.undo()
        assert (fast.next.logprobs - exact.next.logprobs).abs().max() < 1e-4  # on a cache the pass filled
        assert [c.token_id for c in fast.distribution.candidates] == [c.token_id for c in exact.distribution.candidates]


# --- what kill -9 and hostile files leave --------------------------------------------------------


def saved_twice(session, path):
    """The file after three saves (a prompt, a step, another step), and the tree its first two hold."""
    writer = session_file.SessionWriter(path, session.engine)
    writer.save(session.tree, Strategy(), 10)
    session.step()
    writer.save(session.tree, Strategy(), 10)
    held = session_file.load(path).tree
    session.step()
    writer.save(session.tree, Strategy(), 10)
    return held


def test_a_last_line_torn_inside_a_character_opens_without_it_and_says_so(tiny_session, tmp_path):
    """kill -9 in the middle of an append can cut a UTF-8 character in two: the file still opens,
    less that one save, with a note for the person; the next save writes the file whole again."""
    from decoding.records.keeper import SessionKeeper

    path = tmp_path / "s.json"
    held = saved_twice(tiny_session, path)
    first, second, third = path.read_bytes().splitlines(keepends=True)
    torn = first + second + '{"nodes": [{"text": "東'.encode()[:-1]  # the last character cut after its second byte
    path.write_bytes(torn)
    saved = session_file.load(path)
    assert saved.tree.nodes == held.nodes and saved.tree.current == held.current
    assert "cut short" in saved.note and f"its {len(torn) - len(first + second)} bytes after the last whole line" in saved.note
    assert path.read_bytes() == torn  # only read

    notes = []
    reopened = Session(tiny_session.engine.fork(), choices=10)
    keeper = SessionKeeper(path, saved, notes.append)
    keeper.open(reopened, "a prompt")
    keeper.start(reopened)
    assert notes == [saved.note] and reopened.tree.current == held.current
    assert path.read_bytes().count(b"\n") == 1 and path.read_bytes().endswith(b"}\n")  # whole again, the tail gone
    assert session_file.load(path).note == ""


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda node: node["token"].update(logprob=1e308), r"token.logprob: expected a number from -inf to 0"),
        (lambda node: node["panel"]["candidates"][0].update(logprob=1e308), r"candidates\[0\].logprob"),
        (lambda node: node["panel"].update(entropy=1e308), r"panel.entropy: expected a number from 0 to 21.4"),
        (lambda node: node["panel"].update(candidates=[]), r"candidates: expected a list of at least 1 item"),
        (lambda node: node.update(panel=None), "holds a token without the candidates it was chosen from"),
        (lambda node: node["token"].update(rank=2**64), r"token.rank"),
        (lambda node: node["panel"]["candidates"][0].update(server_prob=2.0), r"candidates\[0\].server_prob"),
        (lambda node: node["panel"].update(kept=-1), r"panel.kept"),
        (lambda node: node["panel"]["candidates"][0].update(removed_by=["x"]), r"candidates\[0\].removed_by"),
    ],
)
def test_a_number_out_of_range_or_an_empty_panel_is_refused_before_any_view(tiny_session, tmp_path, damage, message):
    """What once opened and then killed the app (math.exp of 1e308, the panel's first row of none)."""
    path = tmp_path / "s.json"
    tiny_session.step()
    session_file.save(path, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    record = session_file.read_record(path)
    damage(next(node for node in record["tree"]["nodes"] if "token" in node))
    path.write_text(json.dumps(record))
    before = path.read_bytes()
    with pytest.raises(SessionError, match=message):
        session_file.load(path)
    assert path.read_bytes() == before


def comb(depth):
    """A tree that forks at every level: a side branch of one token beside each step of the path."""
    from decoding.core.state import PathToken
    from decoding.search.tree import Tree

    tree = Tree()
    tree.add_root("p", [1])
    for _ in range(depth):
        here = tree.current
        tree.advance(PathToken(3, "b", 0.5, -0.7, 1, True, raw=b"b", piece="b"), None, "forced", None)
        tree.current = here
        tree.advance(PathToken(2, "a", 0.5, -0.7, 0, False, raw=b"a", piece="a"), None, "greedy", None)
    return tree


def test_a_tree_forking_at_every_one_of_thousands_of_levels_is_drawn_in_order():
    tree = comb(3000)  # the rows were once made by recursion, a call per fork: RecursionError
    rows = tree.branches()
    assert len(rows) == 1 + 2 * 3000
    assert [row.level for row in rows[:5]] == [0, 1, 1, 2, 2] and rows[-1].level == 3000
    assert [row.text for row in rows[1:5]] == ["b", "a", "b", "a"] and rows[-1].current
    assert rows[-1].logprob == pytest.approx(-0.7 * 3000)


def test_a_session_of_20000_nodes_opens_in_seconds_and_a_path_beyond_the_context_is_refused_before_model_work(
    tiny_engine, tmp_path
):
    """The chain's path is longer than the model reads: reopening says so at once, before a token of it
    is fed, and the exploration goes on in a new file (the file is left as it is)."""
    import time

    from decoding.records.keeper import SessionKeeper

    session = Session(tiny_engine, choices=2)
    session.reset("hello world")
    session.step()
    tree = session.tree
    token, panel = tree.nodes[tree.current].token, tree.nodes[tree.current].panel
    while len(tree.nodes) < 20_000:
        tree.advance(replace(token, token_id=len(tree.nodes) % tiny_engine.vocab_size), panel, "forced", None)
    path = tmp_path / "chain.json"
    session_file.save(path, tree, tiny_engine, Strategy(), 2)
    before = path.read_bytes()

    started = time.monotonic()
    saved = session_file.load(path)
    fed = []
    engine = tiny_engine.fork()
    feed = engine.feed
    engine.feed = lambda ids: fed.append(len(ids)) or feed(ids)
    reopened, notes = Session(engine, choices=2), []
    keeper = SessionKeeper(path, saved, notes.append)
    keeper.open(reopened, "a prompt")
    took = time.monotonic() - started
    assert len(saved.tree.nodes) == 20_000 and took < 30  # ~3 s here; minutes once
    length = len(session.prompt_ids) + 19_999  # the prompt, then a token a node below the root
    assert f"The saved path is {length:,} tokens long, and this model reads at most 64." in notes[0]
    assert fed == [len(reopened.prompt_ids)]  # only the new prompt: nothing of the saved path
    assert keeper.path != path and path.read_bytes() == before
