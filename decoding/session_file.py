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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.errors import SessionError, SettingsError
from decoding.files import FileError, read_json_file, read_text_file, write_atomically
from decoding.schema import Number, ShapeError, Whole, check
from decoding.settings import Strategy
from decoding.state import Candidate, Distribution, Message, PathToken
from decoding.tree import Node, Tree

FORMAT = "tokenstep-session"
VERSION = 1
SAMPLER_STATE_SIZES = (5056, 16)  # a CPU torch.Generator's state (mt19937), a CUDA one's (seed, offset)


@dataclass(frozen=True)
class SavedSession:
    tree: Tree
    model: dict[str, Any]  # model_id, engine, vocab_size, fingerprint
    strategy: Strategy
    choices: int


def model_identity(engine) -> dict[str, Any]:
    """What tells one model's numbers from another's: the engine, a digest of the weights as loaded
    (checkpoint and dtype), the vocabulary size and a hash of a spread of its tokens' bytes."""
    step = max(1, engine.vocab_size // 256)
    digest = hashlib.sha256()
    for token_id in range(0, engine.vocab_size, step):
        digest.update(engine.token_bytes(token_id) + b"\0")
    return {
        "model_id": engine.model_id,
        "engine": engine.name,
        "dtype": engine.dtype,
        "vocab_size": engine.vocab_size,
        "fingerprint": digest.hexdigest()[:16],
        "weights": engine.weights_digest,
        **({"url": engine.url} if isinstance(getattr(engine, "url", None), str) else {}),
    }


def same_model(saved: dict[str, Any], engine) -> bool:
    """Whether a saved tree's numbers are this engine's: same tokens, same engine, same weights. A file
    from before weight digests were kept is taken at its model's name."""
    current = model_identity(engine)
    if "weights" in saved:
        keys = ("vocab_size", "fingerprint", "engine", "weights")
    else:
        keys = ("vocab_size", "fingerprint", "engine", "model_id")
    return all(saved.get(key) == current[key] for key in keys)


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
        self._nodes: dict[int, tuple[int, str]] = {}  # node id -> (its revision, its JSON)

    def save(self, tree: Tree, strategy: Strategy, choices: int) -> None:
        for node_id, node in tree.nodes.items():
            if self._nodes.get(node_id, (None,))[0] != node.revision:
                self._nodes[node_id] = (node.revision, json.dumps(_node_record(node), ensure_ascii=False))
        for gone in self._nodes.keys() - tree.nodes.keys():  # deleted branches
            del self._nodes[gone]
        head = f'{{"format": "{FORMAT}", "version": {VERSION}, "model": {self._model}, '
        settings = f'"strategy": {json.dumps(strategy.as_dict())}, "choices": {int(choices)}, '
        tree_json = f'"tree": {{"roots": {json.dumps(tree.roots)}, "current": {json.dumps(tree.current)}, "nodes": [{", ".join(text for _, text in self._nodes.values())}]}}}}'
        write_atomically(self.path, head + settings + tree_json)


def tree_record(tree: Tree) -> dict[str, Any]:
    return {"roots": tree.roots, "current": tree.current, "nodes": [_node_record(node) for node in tree.nodes.values()]}


def _node_record(node: Node) -> dict[str, Any]:
    record: dict[str, Any] = {"id": node.id, "parent": node.parent, "made_by": node.made_by}  # children: from parents
    if node.messages:
        record["messages"] = [{"role": m.role, "content": m.content} for m in node.messages]
    if node.token is None:  # a root, or a chat's turn
        record.update(prompt=node.prompt, prompt_ids=list(node.prompt_ids), form=node.form)
    else:
        assert node.token is not None, "every node below a root holds a token"
        # vars(), not dataclasses.asdict: asdict deep-copies, and this runs after every step
        record["token"] = {**vars(node.token), "raw": node.token.raw.hex()}
        panel = node.panel
        record["panel"] = (
            None
            if panel is None
            else {
                "candidates": [vars(candidate) for candidate in panel.candidates],
                "entropy": panel.entropy,
                "processed_entropy": panel.processed_entropy,
                **({} if panel.complete else {"known": panel.known, "covered": panel.covered}),
            }
        )
    if node.rng is not None:
        record["rng"] = base64.b64encode(node.rng).decode("ascii")
    return record


# --- reading ---------------------------------------------------------------------------------------

CANDIDATE_SHAPE = {
    "token_id": Whole(0),
    "text": str,
    "prob": Number(0, 1),
    "logprob": float,
    "rank": Whole(0),
    "processed_prob?": (Number(0, 1), None),
    "removed?": bool,
    "special?": bool,
    "ends?": bool,
}
NODE_SHAPE = {
    "id": Whole(0),
    "parent": (Whole(0), None),
    "made_by": str,
    "prompt?": str,
    "prompt_ids?": [Whole(0)],
    "form?": str,
    "messages?": [{"role": str, "content": str}],
    "token?": {
        "token_id": Whole(0),
        "text": str,
        "prob": Number(0, 1),
        "logprob": float,
        "rank": (Whole(0), None),
        "forced": bool,
        "processed_prob?": (Number(0, 1), None),
        "raw": str,
        "piece": str,
        "special?": bool,
    },
    "panel?": (
        {
            "candidates": [CANDIDATE_SHAPE],
            "entropy": Number(0),
            "processed_entropy": (Number(0), None),
            "known?": (Whole(1), None),
            "covered?": Number(0, 1),
        },
        None,
    ),
    "rng?": str,
}
SESSION_SHAPE = {
    "model": {
        "model_id": (str, None),
        "engine": str,
        "vocab_size": Whole(1),
        "fingerprint": str,
        "weights?": str,
        "dtype?": str,
        "url?": str,
    },
    "strategy": dict,
    "choices": Whole(1),
    "tree": {"roots": [Whole(0)], "current": (Whole(0), None), "nodes": [NODE_SHAPE]},
}


def load(path: Path) -> SavedSession:
    """Read a session file, checked in full; SessionError (saying what is wrong) if it is missing,
    foreign or damaged. The file is only read."""
    try:
        record = read_json_file(path, "a tokenstep session")
    except FileError as error:
        raise SessionError(f"{error} It was left as it is.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SessionError(f'{path} is not a tokenstep session file (no "format": "{FORMAT}"). It was left as it is.')
    if record.get("version") != VERSION:
        raise SessionError(f"{path} is a version {record.get('version')!r} session; this tokenstep reads version {VERSION}.")
    try:
        check(record, SESSION_SHAPE, "session")
        model = dict(record["model"])
        tree = _tree(record["tree"], model["vocab_size"])
        strategy = Strategy(**{**record["strategy"], "suppress_tokens": tuple(record["strategy"].get("suppress_tokens", ()))})
        if record["choices"] > model["vocab_size"]:
            raise ValueError(f"choices is {record['choices']}, more than the vocabulary's {model['vocab_size']} tokens")
    except (ShapeError, ValueError, TypeError, SettingsError) as error:
        raise SessionError(f"{path} is damaged ({error}). It was left as it is.") from None
    return SavedSession(tree, model, strategy, record["choices"])


def _tree(record: dict[str, Any], vocab_size: int) -> Tree:
    tree = Tree()
    for item in record["nodes"]:
        node = _node(item, vocab_size)
        if node.id in tree.nodes:
            raise ValueError(f"two nodes have the id {node.id}")
        tree.nodes[node.id] = node
    for node_id in sorted(tree.nodes):  # children in the order they were made
        parent = tree.nodes[node_id].parent
        if parent is not None:
            if parent not in tree.nodes:
                raise ValueError(f"node {node_id} names a parent, {parent}, that is missing")
            tree.nodes[parent].children.append(node_id)
    tree.roots = list(record["roots"])
    tree.current = record["current"]
    _check_links(tree)
    return tree


def _node(item: dict[str, Any], vocab_size: int) -> Node:
    token = panel = None
    if item["parent"] is None or "token" not in item:  # a root, or a chat's turn
        prompt_ids = tuple(item.get("prompt_ids", ()))
        if not prompt_ids:
            raise ValueError(f"node {item['id']} has neither a token nor prompt ids")
        _check_ids(prompt_ids, vocab_size, item["id"])
    else:
        token = PathToken(**{**item["token"], "raw": _hex(item["token"]["raw"], item["id"])})
        _check_ids([token.token_id], vocab_size, item["id"])
        if item.get("panel"):
            candidates = tuple(Candidate(**candidate) for candidate in item["panel"]["candidates"])
            _check_ids([c.token_id for c in candidates], vocab_size, item["id"])
            saved = item["panel"]
            panel = Distribution(
                candidates, saved["entropy"], saved["processed_entropy"], saved.get("known"), saved.get("covered", 1.0)
            )
    messages = tuple(Message(m["role"], m["content"]) for m in item.get("messages", ()))
    if item["parent"] is not None and token is None and not messages:
        raise ValueError(f"node {item['id']} is a turn without its message")
    return Node(
        id=item["id"],
        parent=item["parent"],
        token=token,
        panel=panel,
        made_by=item["made_by"],
        rng=_sampler_state(item["rng"], item["id"]) if item.get("rng") else None,
        prompt=item.get("prompt", ""),
        prompt_ids=tuple(item.get("prompt_ids", ())),
        form=item.get("form", "plain"),
        messages=messages,
    )


def _check_ids(ids, vocab_size: int, node_id: int) -> None:
    beyond = [token_id for token_id in ids if token_id >= vocab_size]
    if beyond:
        raise ValueError(f"node {node_id} holds token id {beyond[0]}, beyond the vocabulary of {vocab_size}")


def _hex(text: str, node_id: int) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"node {node_id}: its token's raw bytes are not hexadecimal") from None


def _sampler_state(text: str, node_id: int) -> bytes:
    try:
        state = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"node {node_id}: its sampler state is not base64") from None
    if len(state) not in SAMPLER_STATE_SIZES:
        raise ValueError(f"node {node_id}: its sampler state has {len(state)} bytes, not a torch generator's")
    return state


def _check_links(tree: Tree) -> None:
    """Parents, children and roots must point at nodes that exist and agree, and every node must
    lead up to a root (a cycle would make every walk up the tree endless), or the file is damaged."""
    nodes = tree.nodes
    if tree.current is not None and tree.current not in nodes:
        raise ValueError(f"the current node {tree.current} is missing")
    if len(set(tree.roots)) != len(tree.roots):
        raise ValueError("a root is listed twice")
    for node in nodes.values():
        if node.parent is None and node.id not in tree.roots:
            raise ValueError(f"node {node.id} has no parent and is not a root")
    if any(root not in nodes or nodes[root].parent is not None for root in tree.roots):
        raise ValueError("a root is missing or has a parent")
    reaches_root: set[int] = set(tree.roots)
    for start in nodes:
        walked: list[int] = []
        node_id: int | None = start
        while node_id is not None and node_id not in reaches_root:
            if len(walked) > len(nodes):
                raise ValueError(f"the parents of node {walked[0]} form a cycle")
            walked.append(node_id)
            node_id = nodes[node_id].parent
        reaches_root.update(walked)


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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SessionError(
            f"Cannot make the sessions folder {folder} ({error.strerror or error}). "
            "Set TOKENSTEP_DATA to a folder you can write, or pass --session FILE."
        ) from None
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
    try:
        path = Path(read_text_file(marker, "the name of the last session").strip())
    except FileError as error:
        raise SessionError(f"{error} Open a session with --session FILE.") from None
    if not path.is_file():
        raise SessionError(f"The last session, {path}, is gone. Open another with --session FILE.")
    return path
