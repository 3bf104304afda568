"""The exploration tree: branches, siblings, jumps that restore exact distributions, and session files."""

import json
import os

import pytest

from decoding import session_file
from decoding.errors import SessionError
from decoding.session import Session
from decoding.settings import Strategy


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


def test_jump_restores_the_exact_distribution_and_path(tiny_engine):
    session = Session(tiny_engine, Strategy(kind="sample", temperature=0.9, seed=5))
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
    assert session.path == path and session.distribution == distribution and session.tree.current == here
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
    assert reopened.path == session.path and reopened.distribution == session.distribution
    assert reopened.step().token_id == session.step().token_id


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
        ("\xff\xfe garbage", "not UTF-8 text, so it cannot be a tokenstep session"),
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
    from decoding.state import PathToken
    from decoding.tree import Tree

    def token(token_id, raw, piece):
        return PathToken(token_id, f"<0x{raw[0]:02X}>" if not piece else piece, 0.5, -0.7, 0, False, raw=raw, piece=piece)

    tree = Tree()
    tree.add_root("p", [1])
    tree.advance(token(2, b"\xc3", ""), None, "greedy", None)  # the first byte of é
    tree.advance(token(3, b"\xa9", "é"), None, "greedy", None)
    tree.advance(token(4, b"\xe2", ""), None, "greedy", None)  # waits for the rest of its character
    assert tree.branches()[1].text == "é<0xE2>"
