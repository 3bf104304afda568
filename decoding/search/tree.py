"""Every path a person walks, kept: each prompt is a root, each chosen token a node with its step data,
and in a chat each later user message (a turn) a node of its own.

Undo moves up without deleting; choosing a different token from a node opens a sibling branch; choosing
one already tried moves into that branch again. Pure Python (no torch), so it can be saved as JSON and
shown by a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from decoding.core.state import Distribution, Message, PathToken
from decoding.core.tokens import one_line


@dataclass
class Node:
    id: int
    parent: int | None  # None for a root
    token: PathToken | None = None  # None for a root or a turn
    panel: Distribution | None = None  # the candidates on offer when the token was chosen
    made_by: str = "prompt"  # "forced", the strategy that chose it ("greedy", "sample T=0.7 seed=0"), "turn"
    rng: bytes | None = None  # the sampler's state once this token was chosen; None: unchanged from the parent
    children: list[int] = field(default_factory=list)
    prompt: str = ""  # roots and turns: the text fed
    prompt_ids: tuple[int, ...] = ()  # roots and turns: the ids fed
    form: str = "plain"  # roots only: the prompt's form
    messages: tuple[Message, ...] = ()  # a chat root's conversation; a turn's user message

    @property
    def token_id(self) -> int:
        assert self.token is not None, "a root or a turn has no token"
        return self.token.token_id

    @property
    def forced(self) -> bool:
        return self.token is not None and self.token.forced

    @property
    def is_turn(self) -> bool:
        return self.parent is not None and self.token is None

    @property
    def ids(self) -> tuple[int, ...]:
        """What this node fed the model: its token, or its prompt's or turn's ids."""
        return (self.token.token_id,) if self.token is not None else self.prompt_ids


@dataclass(frozen=True)
class Branch:
    """A row of the tree view: a run of nodes without a fork, from just after a fork (or a root)."""

    node_ids: tuple[int, ...]
    level: int  # how many forks above it
    text: str  # its tokens' text on one line (a root's: its prompt)
    logprob: float  # the sequence log-probability at its last node
    made_by: str  # how its first token was made
    on_path: bool  # the current node is in it, or below it
    current: bool  # the current node is in it (its last node, or one before it after an undo)

    @property
    def end(self) -> int:
        return self.node_ids[-1]


class Tree:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.roots: list[int] = []
        self.current: int | None = None
        self.next_id = 0  # ids are never used twice, even after deletes
        # (node id, still there) for every node made, replaced or deleted, in order: what a saver that
        # writes only changes reads on from where it stopped.
        self.changes: list[tuple[int, bool]] = []

    def add_root(self, prompt: str, prompt_ids: list[int], form: str = "plain", messages: tuple[Message, ...] = ()) -> Node:
        """Start at this prompt: its existing root if it was used before, else a new one."""
        for root_id in self.roots:
            if self.nodes[root_id].prompt_ids == tuple(prompt_ids):
                self.current = root_id
                return self.nodes[root_id]
        root = self._new(None, prompt=prompt, prompt_ids=tuple(prompt_ids), form=form, messages=messages)
        self.roots.append(root.id)
        return root

    @property
    def here(self) -> int:
        """The current node (once there is a prompt)."""
        assert self.current is not None, "the tree has no prompt yet"
        return self.current

    def advance(self, token: PathToken, panel: Distribution | None, made_by: str, rng: bytes | None) -> Node:
        """The current node's child for `token`: the branch already there (now saying how it was
        chosen this time: forced, or by the strategy in force), or a new sibling branch."""
        child_id = self.child(self.here, token.token_id)
        if child_id is None:
            return self._new(self.here, token=token, panel=panel, made_by=made_by, rng=rng)
        child = self.nodes[child_id]
        child.token, child.panel, child.made_by, child.rng = token, panel, made_by, rng
        self.changes.append((child_id, True))
        self.current = child_id
        return child

    def enter(self, token_id: int) -> None:
        """Move into the current node's existing child for `token_id` (walking a recorded path again)."""
        child_id = self.child(self.here, token_id)
        if child_id is None:
            raise ValueError(f"node {self.current} has no child for token {token_id}")
        self.current = child_id

    def child(self, node_id: int, token_id: int) -> int | None:
        """The id of `node_id`'s child for `token_id`, if that branch was walked."""
        return next(
            (c for c in self.nodes[node_id].children if self.nodes[c].ids == (token_id,) and not self.nodes[c].is_turn), None
        )

    def add_turn(self, text: str, ids: list[int], messages: tuple[Message, ...]) -> Node:
        """A chat's next turn below the current node: the branch already there, or a new one."""
        here = self.here
        existing = next(
            (c for c in self.nodes[here].children if self.nodes[c].is_turn and self.nodes[c].prompt_ids == tuple(ids)), None
        )
        if existing is not None:
            self.current = existing
            return self.nodes[existing]
        return self._new(here, prompt=text, prompt_ids=tuple(ids), made_by="turn", messages=messages)

    def enter_turn(self, ids: tuple[int, ...]) -> None:
        """Move into the current node's existing turn with these ids (walking a recorded path again)."""
        node = next(
            (c for c in self.nodes[self.here].children if self.nodes[c].is_turn and self.nodes[c].prompt_ids == ids), None
        )
        if node is None:
            raise ValueError(f"node {self.current} has no such turn")
        self.current = node

    def up(self) -> None:
        self.current = self.nodes[self.here].parent

    def path(self, node_id: int) -> list[Node]:
        """Root first, `node_id` last."""
        nodes = [self.nodes[node_id]]
        while (parent := nodes[-1].parent) is not None:
            nodes.append(self.nodes[parent])
        return nodes[::-1]

    def siblings(self, node_id: int) -> list[int]:
        """The node and its siblings in the order they were made (for a root: all roots)."""
        parent = self.nodes[node_id].parent
        return list(self.roots) if parent is None else list(self.nodes[parent].children)

    def sibling(self, node_id: int, delta: int) -> int:
        """The sibling `delta` places away (wrapping around), or the node itself if it has none."""
        siblings = self.siblings(node_id)
        return siblings[(siblings.index(node_id) + delta) % len(siblings)]

    def delete(self, node_id: int) -> None:
        """Remove a node and everything below it; never the current path (delete elsewhere first)."""
        doomed = self._subtree(node_id)
        if self.current in doomed:
            raise ValueError("the current path runs through it")
        node = self.nodes[node_id]
        if node.parent is None:
            self.roots.remove(node_id)
        else:
            self.nodes[node.parent].children.remove(node_id)
        for doomed_id in doomed:
            del self.nodes[doomed_id]
            self.changes.append((doomed_id, False))

    def _subtree(self, node_id: int) -> set[int]:
        found, stack = set(), [node_id]
        while stack:
            found.add(stack[-1])
            stack.extend(self.nodes[stack.pop()].children)
        return found

    def branches(self) -> list[Branch]:
        """Rows for a view, depth first: each root, then its runs of nodes, forks indented. (A loop,
        not recursion: a file can hold a fork at every one of thousands of levels.)"""
        on_path = {node.id for node in self.path(self.current)} if self.current is not None else set()
        rows: list[Branch] = []
        for root_id in self.roots:
            root = self.nodes[root_id]
            rows.append(Branch((root_id,), 0, one_line(root.prompt), 0.0, "prompt", root_id in on_path, root_id == self.current))
            below = [(child, 1, 0.0) for child in reversed(root.children)]  # the next run's start, level, logprob above
            while below:
                row = self._run(*below.pop(), on_path)
                rows.append(row)
                below.extend((child, row.level + 1, row.logprob) for child in reversed(self.nodes[row.end].children))
        return rows

    def _run(self, start: int, level: int, logprob_above: float, on_path: set[int]) -> Branch:
        """The run from `start` down to a fork or a leaf; `logprob_above`: the sequence
        log-probability where the run starts."""
        run = [start]
        while len(children := self.nodes[run[-1]].children) == 1 and not self.nodes[children[0]].is_turn:
            run.append(children[0])
        tokens = [token for node_id in run if (token := self.nodes[node_id].token) is not None]
        logprob = logprob_above + sum(token.logprob for token in tokens)
        first = self.nodes[start]
        text = _run_text(tokens)
        if first.is_turn and first.messages:  # a chat's next message, then the reply to it
            text = f"▸ {first.messages[-1].role}: {first.messages[-1].content} ▸ {text}"
        return Branch(
            tuple(run),
            level,
            one_line(text),
            logprob,
            first.made_by,
            any(node_id in on_path for node_id in run),
            self.current in run,
        )

    def _new(self, parent: int | None, **fields) -> Node:
        node = Node(id=self.next_id, parent=parent, **fields)
        self.next_id += 1
        self.nodes[node.id] = node
        self.changes.append((node.id, True))
        if parent is not None:
            self.nodes[parent].children.append(node.id)
        self.current = node.id
        return node


def _run_text(tokens: list[PathToken]) -> str:
    """Whole characters, as the text view shows them; bytes still waiting for the rest of their
    character at the end show as `<0xE2>` rather than not at all."""
    text = "".join(token.piece for token in tokens)
    pending = []
    for token in reversed(tokens):
        if token.piece:
            break
        pending.append(token.text)
    return text + "".join(reversed(pending))
