"""Session files: the whole tree, the model it was made with and the strategy settings, as JSON.

Written atomically (a temporary file in the same folder, flushed to disk, then renamed over the old
one), so a kill at any moment leaves either the old file or the new one, never a damaged one. A file
that is not a session, or is damaged, is refused with a clear message and left as it is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
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
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_identity(engine),
        "strategy": strategy.as_dict(),
        "choices": choices,
        "tree": tree_record(tree),
    }
    write_atomically(path, json.dumps(record, ensure_ascii=False))


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tree_record(tree: Tree) -> dict[str, Any]:
    return {"roots": tree.roots, "current": tree.current, "nodes": [_node_record(node) for node in tree.nodes.values()]}


def _node_record(node: Node) -> dict[str, Any]:
    record: dict[str, Any] = {"id": node.id, "parent": node.parent, "made_by": node.made_by, "children": node.children}
    if node.parent is None:
        record.update(prompt=node.prompt, prompt_ids=list(node.prompt_ids))
    else:
        token = asdict(node.token)
        token["raw"] = node.token.raw.hex()
        record["token"] = token
        record["panel"] = asdict(node.panel) if node.panel is not None else None
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
        return SavedSession(_tree(record["tree"]), dict(record["model"]), Strategy(**_strategy_fields(record["strategy"])), int(record["choices"]))
    except (KeyError, TypeError, ValueError, AttributeError, SettingsError) as error:
        raise SessionError(f"{path} is damaged ({type(error).__name__}: {error}). It was left as it is.") from None


def _strategy_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "suppress_tokens": tuple(fields.get("suppress_tokens", ()))}


def _tree(record: dict[str, Any]) -> Tree:
    tree = Tree()
    for item in record["nodes"]:
        node = _node(item)
        tree.nodes[node.id] = node
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
        children=[int(child) for child in item["children"]],
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
        if node.parent is not None and (node.parent not in nodes or node.id not in nodes[node.parent].children):
            raise ValueError(f"node {node.id} and its parent {node.parent} disagree")
        if any(child not in nodes for child in node.children):
            raise ValueError(f"node {node.id} names a child that is missing")
    if any(root not in nodes or nodes[root].parent is not None for root in tree.roots):
        raise ValueError("a root is missing or has a parent")
