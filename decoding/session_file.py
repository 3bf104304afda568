"""Session files: the whole tree, the model it was made with and the strategy settings, as JSON.

Written atomically (a temporary file in the same folder, then renamed over the old one), so a killed
process leaves either the old file or the new one, never a damaged one. A file
that is not a session, or is damaged, is refused with a clear message and left as it is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.errors import SessionError, SettingsError
from decoding.settings import Strategy
from decoding.state import Candidate, Distribution, PathToken
from decoding.tree import Node, Tree

FORMAT = "tokenstep-session"
VERSION = 1


@dataclass(frozen=True)
class SavedSession:
    tree: Tree
    model: dict[str, Any]  # model_id, engine, vocab_size, fingerprint
    strategy: Strategy
    choices: int


def model_identity(engine) -> dict[str, Any]:
    """What tells one model's tokens from another's: the name shown, the engine, the vocabulary size
    and a hash of a spread of its tokens' bytes (two checkpoints of one model share it; that is fine:
    their paths and candidates mean the same tokens)."""
    step = max(1, engine.vocab_size // 256)
    digest = hashlib.sha256()
    for token_id in range(0, engine.vocab_size, step):
        digest.update(engine.token_bytes(token_id) + b"\0")
    return {"model_id": engine.model_id, "engine": engine.name, "vocab_size": engine.vocab_size, "fingerprint": digest.hexdigest()[:16]}


def same_model(saved: dict[str, Any], engine) -> bool:
    current = model_identity(engine)
    return saved.get("vocab_size") == current["vocab_size"] and saved.get("fingerprint") == current["fingerprint"]


# --- writing ---------------------------------------------------------------------------------------


def save(path: Path, tree: Tree, engine, strategy: Strategy, choices: int) -> None:
    SessionWriter(path, engine).save(tree, strategy, choices)


class SessionWriter:
    """Saves one session file again and again, cheaply: a node never changes once made, so each is
    turned into JSON once and the file is the joined pieces (a save after every step stays ~1 ms
    for hundreds of nodes, where dumping the whole tree each time took 50 ms at 276 nodes)."""

    def __init__(self, path: Path, engine) -> None:
        self.path = path
        self._model = json.dumps(model_identity(engine), ensure_ascii=False)
        self._nodes: dict[int, str] = {}

    def save(self, tree: Tree, strategy: Strategy, choices: int) -> None:
        for node_id, node in tree.nodes.items():
            if node_id not in self._nodes:
                self._nodes[node_id] = json.dumps(_node_record(node), ensure_ascii=False)
        for gone in self._nodes.keys() - tree.nodes.keys():  # deleted branches
            del self._nodes[gone]
        head = f'{{"format": "{FORMAT}", "version": {VERSION}, "model": {self._model}, '
        settings = f'"strategy": {json.dumps(strategy.as_dict())}, "choices": {int(choices)}, '
        tree_json = f'"tree": {{"roots": {json.dumps(tree.roots)}, "current": {json.dumps(tree.current)}, "nodes": [{", ".join(self._nodes.values())}]}}}}'
        write_atomically(self.path, head + settings + tree_json)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)  # no fsync: the rename is atomic against a killed process, and an fsync
        os.replace(temporary, path)  # per step cost more than the step (it guards only against power loss)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tree_record(tree: Tree) -> dict[str, Any]:
    return {"roots": tree.roots, "current": tree.current, "nodes": [_node_record(node) for node in tree.nodes.values()]}


def _node_record(node: Node) -> dict[str, Any]:
    record: dict[str, Any] = {"id": node.id, "parent": node.parent, "made_by": node.made_by}  # children: from parents
    if node.parent is None:
        record.update(prompt=node.prompt, prompt_ids=list(node.prompt_ids))
    else:
        # vars(), not dataclasses.asdict: asdict deep-copies, and this runs after every step
        record["token"] = {**vars(node.token), "raw": node.token.raw.hex()}
        panel = node.panel
        record["panel"] = None if panel is None else {
            "candidates": [vars(candidate) for candidate in panel.candidates],
            "entropy": panel.entropy,
            "processed_entropy": panel.processed_entropy,
        }
    if node.rng is not None:
        record["rng"] = base64.b64encode(node.rng).decode("ascii")
    return record


# --- reading ---------------------------------------------------------------------------------------


def load(path: Path) -> SavedSession:
    """Read a session file; SessionError (saying what is wrong) if it is missing, foreign or damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SessionError(f"{path}: cannot read the session file ({error.strerror or error}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SessionError(f"{path} is damaged or not a tokenstep session (not valid JSON: {error}). It was left as it is.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SessionError(f"{path} is not a tokenstep session file (no \"format\": \"{FORMAT}\"). It was left as it is.")
    if record.get("version") != VERSION:
        raise SessionError(f"{path} is a version {record.get('version')!r} session; this tokenstep reads version {VERSION}.")
    try:
        return SavedSession(_tree(record["tree"]), dict(record["model"]), Strategy(**record["strategy"]), int(record["choices"]))
    except (KeyError, TypeError, ValueError, AttributeError, SettingsError) as error:
        raise SessionError(f"{path} is damaged ({type(error).__name__}: {error}). It was left as it is.") from None


def _tree(record: dict[str, Any]) -> Tree:
    tree = Tree()
    for item in record["nodes"]:
        node = _node(item)
        tree.nodes[node.id] = node
    for node_id in sorted(tree.nodes):  # children in the order they were made
        parent = tree.nodes[node_id].parent
        if parent is not None:
            if parent not in tree.nodes:
                raise ValueError(f"node {node_id} names a parent, {parent}, that is missing")
            tree.nodes[parent].children.append(node_id)
    tree.roots = [int(root) for root in record["roots"]]
    tree.current = record["current"]
    _check_links(tree)
    return tree


def _node(item: dict[str, Any]) -> Node:
    token = panel = None
    if item["parent"] is not None:
        token = PathToken(**{**item["token"], "raw": bytes.fromhex(item["token"]["raw"])})
        if item.get("panel"):
            panel = Distribution(
                tuple(Candidate(**candidate) for candidate in item["panel"]["candidates"]),
                item["panel"]["entropy"],
                item["panel"]["processed_entropy"],
            )
    return Node(
        id=int(item["id"]),
        parent=item["parent"],
        token=token,
        panel=panel,
        made_by=str(item["made_by"]),
        rng=base64.b64decode(item["rng"]) if item.get("rng") else None,
        prompt=str(item.get("prompt", "")),
        prompt_ids=tuple(int(t) for t in item.get("prompt_ids", ())),
    )


def _check_links(tree: Tree) -> None:
    """Parents, children and roots must point at nodes that exist and agree, or the file is damaged."""
    nodes = tree.nodes
    if tree.current is not None and tree.current not in nodes:
        raise ValueError(f"the current node {tree.current} is missing")
    for node in nodes.values():
        if node.parent is None and node.id not in tree.roots:
            raise ValueError(f"node {node.id} has no parent and is not a root")
        if node.parent is not None and (node.token is None) != (node.parent is None):
            raise ValueError(f"node {node.id} has a parent but no token")
    if any(root not in nodes or nodes[root].parent is not None for root in tree.roots):
        raise ValueError("a root is missing or has a parent")


# --- where sessions live ---------------------------------------------------------------------------


def data_root() -> Path:
    """$TOKENSTEP_DATA, else $XDG_DATA_HOME/tokenstep, else ~/.local/share/tokenstep."""
    if override := os.environ.get("TOKENSTEP_DATA"):
        return Path(override)
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(xdg) / "tokenstep"


def new_session_path() -> Path:
    """A fresh file for a session started without --session: one per start, never overwriting another."""
    folder = data_root() / "sessions"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"session-{stamp}.json", 1
    while path.exists():
        n += 1
        path = folder / f"session-{stamp}-{n}.json"
    return path


def remember_last(path: Path) -> None:
    write_atomically(data_root() / "last-session", str(path.resolve()))


def last_session() -> Path:
    marker = data_root() / "last-session"
    if not marker.is_file():
        raise SessionError(f"There is no session to resume yet ({marker} does not exist). Start one with tokenstep.")
    path = Path(marker.read_text(encoding="utf-8").strip())
    if not path.is_file():
        raise SessionError(f"The last session, {path}, is gone. Open another with --session FILE.")
    return path
