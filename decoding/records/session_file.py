"""Session files: the whole tree, the model it was made with and the strategy settings, as JSON.

The first line is the whole session, one JSON object; each later line says what one save changed
(the nodes made or replaced, the nodes deleted, where the path is, the settings). A save after a
step appends one short line, whatever the tree's size; once the appended lines outweigh the first,
the next save writes the file afresh as one line again (atomically: a temporary file renamed over
the old one). A process killed in the middle of a save leaves at most a last line cut short, which
reading ignores: the file still opens, less that one save. A file that is not a session, or is
damaged, is refused with a clear message and left as it is.
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

from decoding.core.errors import SessionError, SettingsError
from decoding.core.files import (
    FileError,
    append_line,
    path_problem,
    read_file_bytes,
    read_text_file,
    shown_path,
    write_atomically,
)
from decoding.core.json_text import JsonError, parse_json
from decoding.core.schema import (
    ENTROPY,
    LOG_PROBABILITY,
    MAX_VOCABULARY,
    PROBABILITY,
    TOKEN_ID,
    Items,
    ShapeError,
    Whole,
    check,
)
from decoding.core.settings import MAX_CHOICES, Strategy
from decoding.core.state import Candidate, Distribution, Message, PathToken
from decoding.core.steering import Steering
from decoding.search.tree import Node, Tree

FORMAT = "tokenstep-session"
VERSION = 2  # 1: the first line alone, as version 1 files are read still
COMPACT_AFTER_BYTES = 1 << 20  # appended lines are folded into one once they outweigh the first line and this
SAMPLER_STATE_SIZES = (5056, 16)  # a CPU torch.Generator's state (mt19937), a CUDA one's (seed, offset)


@dataclass(frozen=True)
class SavedSession:
    tree: Tree
    model: dict[str, Any]  # model_id, engine, vocab_size, fingerprint
    strategy: Strategy
    choices: int
    note: str = ""  # for the person: what reading left out (a last save cut short)
    steering: Steering | None = None  # the steering it was explored under (a contrast pair or a vector file)


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


def save(path: Path, tree: Tree, engine, strategy: Strategy, choices: int, steering: Steering | None = None) -> None:
    SessionWriter(path, engine).save(tree, strategy, choices, steering)


class SessionWriter:
    """Saves one session file again and again at a cost that does not grow with the tree: each node
    is turned into JSON once, when it is made or replaced (the tree's change log says which), and a
    save appends a line with those alone."""

    def __init__(self, path: Path, engine) -> None:
        self.path = path
        self._model = json.dumps(model_identity(engine), ensure_ascii=False)
        self._nodes: dict[int, str] = {}  # node id -> its JSON, for writing the whole file afresh
        self._tree: Tree | None = None  # the tree the file holds; another one is written afresh
        self._seen = 0  # how many of the tree's changes the file holds
        self._first_line = self._appended = 0  # bytes

    def save(self, tree: Tree, strategy: Strategy, choices: int, steering: Steering | None = None) -> None:
        changed, gone = self._take_changes(tree)
        where = f'"roots": {json.dumps(tree.roots)}, "current": {json.dumps(tree.current)}, '
        settings = f'"strategy": {json.dumps(strategy.as_dict())}, "choices": {int(choices)}'
        if steering is not None:
            settings += f', "steering": {json.dumps(steering.record(), ensure_ascii=False)}'
        if changed is None or self._appended > max(self._first_line, COMPACT_AFTER_BYTES):
            return self._write_afresh(where, settings)
        line = f'{{"nodes": [{", ".join(self._nodes[node_id] for node_id in changed)}], "gone": {json.dumps(gone)}, {where}{settings}}}\n'
        try:
            self._appended += append_line(self.path, line)
        except FileNotFoundError:  # moved away or deleted since: the session is written whole again
            self._write_afresh(where, settings)

    def _take_changes(self, tree: Tree) -> tuple[list[int] | None, list[int]]:
        """The nodes made or replaced and the nodes deleted since the last save (None: a tree this
        file does not hold yet, to be written whole)."""
        if tree is not self._tree:
            self._tree, self._seen = tree, len(tree.changes)
            self._nodes = {node_id: _node_json(node) for node_id, node in tree.nodes.items()}
            return None, []
        latest = dict(tree.changes[self._seen :])  # node id -> there at the end
        self._seen = len(tree.changes)
        for node_id, there in latest.items():
            if there:
                self._nodes[node_id] = _node_json(tree.nodes[node_id])
            else:
                self._nodes.pop(node_id, None)
        return [i for i, there in latest.items() if there], [i for i, there in latest.items() if not there]

    def _write_afresh(self, where: str, settings: str) -> None:
        head = f'{{"format": "{FORMAT}", "version": {VERSION}, "model": {self._model}, {settings}, '
        text = f'{head}"tree": {{{where}"nodes": [{", ".join(self._nodes.values())}]}}}}\n'
        write_atomically(self.path, text)
        self._first_line, self._appended = len(text), 0


def _node_json(node: Node) -> str:
    return json.dumps(_node_record(node), ensure_ascii=False)


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
                **(
                    {}
                    if panel.kept is None
                    else {"kept": panel.kept, "kept_mass": panel.kept_mass, "vocab_size": panel.vocab_size}
                ),
            }
        )
    if node.rng is not None:
        record["rng"] = base64.b64encode(node.rng).decode("ascii")
    return record


# --- reading ---------------------------------------------------------------------------------------

RANK = Whole(0, MAX_VOCABULARY - 1)
CANDIDATE_SHAPE = {
    "token_id": TOKEN_ID,
    "text": str,
    "prob": PROBABILITY,
    "logprob": LOG_PROBABILITY,
    "rank": RANK,
    "processed_prob?": (PROBABILITY, None),
    "removed?": bool,
    "special?": bool,
    "ends?": bool,
    "removed_by?": str,
    "server_prob?": (PROBABILITY, None),
}
CANDIDATE_FIELDS = [name.removesuffix("?") for name in CANDIDATE_SHAPE]  # a key a later version adds is left out
NODE_SHAPE = {
    "id": Whole(0),
    "parent": (Whole(0), None),
    "made_by": str,
    "prompt?": str,
    "prompt_ids?": [TOKEN_ID],
    "form?": str,
    "messages?": [{"role": str, "content": str}],
    "token?": {
        "token_id": TOKEN_ID,
        "text": str,
        "prob": PROBABILITY,
        "logprob": LOG_PROBABILITY,
        "rank": (RANK, None),
        "forced": bool,
        "processed_prob?": (PROBABILITY, None),
        "raw": str,
        "piece": str,
        "special?": bool,
    },
    "panel?": (
        {
            "candidates": Items(CANDIDATE_SHAPE, least=1),
            "entropy": ENTROPY,
            "processed_entropy": (ENTROPY, None),
            "known?": (Whole(1, MAX_VOCABULARY), None),
            "covered?": PROBABILITY,
            "kept?": Whole(0, MAX_VOCABULARY),
            "kept_mass?": PROBABILITY,
            "vocab_size?": Whole(0, MAX_VOCABULARY),
        },
        None,
    ),
    "rng?": str,
}
SESSION_SHAPE = {
    "model": {
        "model_id": (str, None),
        "engine": str,
        "vocab_size": Whole(1, MAX_VOCABULARY),
        "fingerprint": str,
        "weights?": str,
        "dtype?": str,
        "url?": str,
    },
    "strategy": dict,
    "choices": Whole(1),
    "steering?": dict,
    "tree": {"roots": [Whole(0)], "current": (Whole(0), None), "nodes": [NODE_SHAPE]},
}


CHANGE_SHAPE = {
    "nodes": [NODE_SHAPE],
    "gone": [Whole(0)],
    "roots": [Whole(0)],
    "current": (Whole(0), None),
    "strategy": dict,
    "choices": Whole(1),
    "steering?": dict,
}


def load(path: Path) -> SavedSession:
    """Read a session file, checked in full; SessionError (saying what is wrong) if it is missing,
    foreign or damaged. The file is only read."""
    try:
        record, note = _read(path)
    except FileError as error:
        raise SessionError(f"{error} It was left as it is.") from None
    try:
        check(record, SESSION_SHAPE, "session")
        model = dict(record["model"])
        tree = _tree(record["tree"], model["vocab_size"])
        strategy = Strategy(**{**record["strategy"], "suppress_tokens": tuple(record["strategy"].get("suppress_tokens", ()))})
        steering = Steering.from_record(record["steering"]) if "steering" in record else None
        if record["choices"] > model["vocab_size"]:
            raise ValueError(f"choices is {record['choices']}, more than the vocabulary's {model['vocab_size']} tokens")
    except (ShapeError, ValueError, TypeError, SettingsError) as error:
        raise SessionError(f"{shown_path(path)} is damaged ({error}). It was left as it is.") from None
    # More candidates than a panel shows now (files from before the cap): a setting, not data.
    return SavedSession(tree, model, strategy, min(record["choices"], MAX_CHOICES), note, steering)


def load_if_there(path: Path) -> SavedSession | None:
    """The session in the file at `path`, or None if there is no file yet; SessionError if the name
    cannot be a file's or the file cannot be read as a session."""
    if problem := path_problem(str(path)):
        raise SessionError(f"{shown_path(path)} cannot be a session file: {problem}.")
    try:
        there = path.exists()
    except OSError as error:
        raise SessionError(f"{shown_path(path)} cannot be a session file ({error.strerror or error}).") from None
    return load(path) if there else None  # a damaged file stops here, untouched


def read_record(path: Path) -> dict[str, Any]:
    """The session as one JSON object: the first line with every later line's changes applied (a
    last line cut short by a killed save is left out). FileError if it is not a session's file;
    SessionError if a line is damaged. Shapes are checked by `load`."""
    return _read(path)[0]


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """`read_record`'s record, and a note for the person when the last save was cut short."""
    what = "a tokenstep session"
    data = read_file_bytes(path, what)
    first, _, rest = data.partition(b"\n")
    *lines, torn = rest.split(b"\n")  # whole lines only: the bytes after the last newline are a save cut short
    try:
        record = _json(first, 1)
    except ValueError:
        try:  # one object over several lines: a version 1 file, or one a person formatted
            record, lines, torn = _json(data), [], b""
        except ValueError as error:
            raise FileError(f"{shown_path(path)} is not {what}: {error}.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SessionError(f'{shown_path(path)} is not a tokenstep session file (no "format": "{FORMAT}"). It was left as it is.')
    if record.get("version") not in (1, VERSION):
        raise SessionError(
            f"{shown_path(path)} is a version {record.get('version')!r} session; this tokenstep reads versions 1 and {VERSION}."
        )
    try:
        _apply_changes(record, lines)
    except (ShapeError, ValueError) as error:
        raise SessionError(f"{shown_path(path)} is damaged ({error}). It was left as it is.") from None
    note = (
        f"The last save to {shown_path(path)} was cut short (the process was stopped while writing it): "
        f"its {len(torn):,} bytes after the last whole line were left out."
        if torn
        else ""
    )
    return record, note


def _json(data: bytes, line: int | None = None) -> Any:
    """The JSON value of one line (None: of the whole file); ValueError saying what is wrong."""
    where = "" if line is None else f"line {line}: "
    try:
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}not UTF-8 text (byte {error.start})") from None
    except JsonError as error:
        raise ValueError(f"{where}{error}") from None


def _apply_changes(record: dict[str, Any], lines: list[bytes]) -> None:
    """The saved changes, in order, onto the whole record (whose own shape `load` checks afterwards)."""
    if not lines:
        return
    tree = record.get("tree")
    if not isinstance(tree, dict) or not isinstance(tree.get("nodes"), list):
        raise ValueError("line 2 changes a tree that the first line does not hold")
    if not all(isinstance(node, dict) and type(node.get("id")) is int for node in tree["nodes"]):
        raise ValueError("a node of the first line has no whole-number id")
    nodes = {node["id"]: node for node in tree["nodes"]}
    if len(nodes) != len(tree["nodes"]):
        raise ValueError("two nodes of the first line have one id")
    for number, line in enumerate(lines, start=2):
        change = _json(line, number)
        check(change, CHANGE_SHAPE, f"line {number}")
        nodes.update((node["id"], node) for node in change["nodes"])
        for node_id in change["gone"]:
            nodes.pop(node_id, None)
        tree.update(roots=change["roots"], current=change["current"])
        record.update(strategy=change["strategy"], choices=change["choices"])
        if "steering" in change:
            record["steering"] = change["steering"]
        else:
            record.pop("steering", None)
    tree["nodes"] = list(nodes.values())


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
    tree.next_id = max(tree.nodes, default=-1) + 1
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
        saved = item.get("panel")
        if not saved:  # every save holds it: without it the path could only be read again a token at a time
            raise ValueError(f"node {item['id']} holds a token without the candidates it was chosen from")
        candidates = tuple(
            Candidate(**{key: candidate[key] for key in CANDIDATE_FIELDS if key in candidate})
            for candidate in saved["candidates"]
        )
        _check_ids([c.token_id for c in candidates], vocab_size, item["id"])
        panel = Distribution(
            candidates,
            saved["entropy"],
            saved["processed_entropy"],
            saved.get("known"),
            saved.get("covered", 1.0),
            kept=saved.get("kept"),
            kept_mass=saved.get("kept_mass", 1.0),
            vocab_size=saved.get("vocab_size", vocab_size),
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
        name = read_text_file(marker, "the name of the last session").strip()
    except FileError as error:
        raise SessionError(f"{error} Open a session with --session FILE.") from None
    if problem := "it is empty" if not name else path_problem(name):
        raise SessionError(f"{marker} does not name the last session ({problem}). Open a session with --session FILE.")
    path = Path(name)
    if not path.is_file():
        raise SessionError(f"The last session, {shown_path(path)}, is gone. Open another with --session FILE.")
    return path
