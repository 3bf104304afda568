"""The core state machine: a prompt, the tokens chosen after it, and the model's KV cache.

Each step runs the model on the one new token (never the whole sequence again). Undo crops the cache
and restores the distribution that was stored for that position, so it is exactly what it was.
"""

from __future__ import annotations

import math

import torch

from decoding.distribution import rank_of, summarize
from decoding.engine import Engine, decode_continuation
from decoding.errors import SessionError, SettingsError
from decoding.processors import build_processors, explain
from decoding.settings import Strategy
from decoding.state import Candidate, Distribution, PathToken, ProcessorReport, Snapshot
from decoding.tokens import RunningText, TokenTexts, bytes_to_text, undecodable_at
from decoding.tree import Tree

DEFAULT_CHOICES = 10


class Session:
    def __init__(self, engine: Engine, strategy: Strategy = Strategy(), choices: int = DEFAULT_CHOICES) -> None:
        self.engine = engine
        self._strategy = strategy
        self._processors = build_processors(strategy)
        self._choices = _checked_choices(choices, engine.vocab_size)
        self.prompt = ""
        self.prompt_ids: list[int] = []
        self._path: list[PathToken] = []
        self._panels: list[Distribution] = []  # _panels[i]: the candidates shown when path token i was chosen
        self._running_text = RunningText()
        self._logits: list[torch.Tensor] = []  # _logits[i]: raw logits that predicted path token i
        self._rng_states: list[torch.Tensor] = []  # sampler state before path token i was chosen
        self._strategies: list[Strategy] = []  # the strategy in force when path token i was chosen
        self._ahead: dict[int, tuple[torch.Tensor, object]] = {}  # token id -> (next logits, its cache entry)
        self._rng = torch.Generator()  # made again on the logits' device at each reset
        self._distribution: Distribution | None = None
        self._current_logprobs: torch.Tensor | None = None  # log-softmax of _logits[-1], once computed
        self._current_scores: torch.Tensor | None = None  # _logits[-1] after the processors, once computed
        self.token_text = TokenTexts(engine.token_bytes)  # one token's own text, e.g. `<0xE2>` for a partial byte
        self.finished: str | None = None  # why no further token can be chosen: "eos" or "context limit"
        self.tree = Tree()  # every path walked from every prompt; the current path is tree.current's

    # --- state -----------------------------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def choices(self) -> int:
        return self._choices

    @property
    def path(self) -> tuple[PathToken, ...]:
        return tuple(self._path)

    @property
    def panels(self) -> tuple[Distribution, ...]:
        """The candidates that were on offer before each path token."""
        return tuple(self._panels)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            prompt=self.prompt,
            path=self.path,
            pieces=self._pieces(),
            distribution=self.distribution,
            finished=self.finished,
            strategy=self._strategy,
            choices=self._choices,
        )

    @property
    def generated_ids(self) -> list[int]:
        return [token.token_id for token in self._path]

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.generated_ids

    @property
    def text(self) -> str:
        """Prompt and generation, decoded as one sequence so multi-token characters come out whole."""
        return self.engine.decode(self.ids)

    @property
    def generated_text(self) -> str:
        return decode_continuation(self.engine, self.prompt_ids, self.generated_ids)

    @property
    def sequence_logprob(self) -> float:
        """Sum of the chosen tokens' raw-model log-probabilities (the chapter's `sequence_logprob`)."""
        return sum(token.logprob for token in self._path)

    @property
    def distribution(self) -> Distribution | None:
        """The next token's candidates; None before a prompt is set or once the generation has ended."""
        if not self.prompt_ids or self.finished:
            return None
        if self._distribution is None:
            self._distribution = summarize(self._logits[-1], self._logprobs(), self._processed(), self._choices, self.token_text)
        return self._distribution

    def processor_report(self, index: int | None = None) -> ProcessorReport | None:
        """What each of the strategy's processors did to the candidates before path token `index`
        (default: the next token). None when the strategy has no processors or there is no such step."""
        index = len(self._path) if index is None else index
        if not 0 <= index < len(self._logits):
            return None
        strategy = self._strategies[index] if index < len(self._strategies) else self._strategy  # as it was then
        panel = self._panels[index] if index < len(self._panels) else self.distribution
        if panel is None or not strategy.reshapes:
            return None
        ids = self.ids[: len(self.prompt_ids) + index]
        return explain(strategy, ids, self._logits[index], [c.token_id for c in panel.candidates])

    # --- settings --------------------------------------------------------------------------------

    def set_strategy(self, strategy: Strategy) -> None:
        """Switch strategy; the path stays, the current distribution is recomputed under the new one.

        A new seed restarts the sampler from here, as if generation had been seeded at this point.
        """
        self._processors = build_processors(strategy)
        if strategy.seed != self._strategy.seed:
            self._rng.manual_seed(strategy.seed)
        self._strategy = strategy
        self._distribution = self._current_scores = None

    def set_choices(self, choices: int) -> None:
        self._choices = _checked_choices(choices, self.engine.vocab_size)
        self._distribution = None

    # --- commands --------------------------------------------------------------------------------

    def reset(self, prompt: str, prompt_ids: list[int] | None = None) -> None:
        """Start again from `prompt` (or from `prompt_ids`, of which `prompt` is then the text: a path
        re-encoded as text could tokenize differently). An invalid prompt is refused; the path is kept."""
        prompt_ids = self._checked_prompt(prompt) if prompt_ids is None else self._checked_ids(list(prompt_ids))
        self._start(prompt, prompt_ids)
        self.tree.add_root(prompt, prompt_ids)

    def _start(self, prompt: str, prompt_ids: list[int]) -> None:
        old_ids = self.ids
        self.engine.crop(0)
        try:
            logits = self.engine.feed(prompt_ids)
        except BaseException:
            self._refeed(old_ids)
            raise
        self.prompt, self.prompt_ids = prompt, prompt_ids
        self._path, self._panels, self._logits, self._rng_states, self._strategies = [], [], [logits], [], []
        self._running_text = RunningText()
        # Sample on the logits' device, as generate() does, so the same seed gives the same tokens.
        self._rng = torch.Generator(device=logits.device)
        self._rng.manual_seed(self._strategy.seed)
        self.finished = None
        self._moved()

    def step(self) -> PathToken:
        """Choose the next token by the strategy and append it."""
        self._check_can_choose()
        rng_state = self._rng.get_state()
        scores = self._scores()
        token_id = self._choose(scores)
        try:
            return self._append(token_id, False, self._processed(), rng_state)
        except BaseException:
            self._rng.set_state(rng_state)
            raise

    def strategy_choice(self) -> int:
        """The token `step()` would choose now, without choosing it (the sampler's state is kept)."""
        rng_state = self._rng.get_state()
        try:
            self._check_can_choose()
            return self._choose(self._scores())
        finally:
            self._rng.set_state(rng_state)

    def look_ahead(self, token_ids: list[int], should_stop=lambda: False) -> None:
        """Run the model ahead for each of `token_ids`, so choosing one of them later is instant.

        One forward pass each, exactly the one `step`/`force` would run, so the results are the same
        to the bit. `should_stop` is asked between passes: work ahead never delays what a person asks
        for by more than the pass in flight. The work is dropped as soon as the path changes.
        """
        if not self.engine.can_look_ahead:
            return
        for token_id in token_ids:
            if should_stop():
                return
            if token_id in self._ahead or self.finished or self._ending_after(token_id):
                continue
            logits = self.engine.feed([token_id])
            self._ahead[token_id] = (logits, self.engine.detach_last(1))

    @property
    def looked_ahead(self) -> frozenset[int]:
        """The tokens whose next distribution is already computed."""
        return frozenset(self._ahead)

    def _choose(self, scores: torch.Tensor) -> int:
        if self._strategy.do_sample:
            return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self._rng))
        if not self._processors and self.distribution is not None:
            return self.distribution.candidates[0].token_id  # the panel's row 0 is the argmax (ties by id)
        return int(torch.argmax(scores))

    def force(self, token_id: int) -> PathToken:
        """Append any token of the vocabulary, whatever the strategy would have chosen."""
        self._check_can_choose()
        if not isinstance(token_id, int) or not 0 <= token_id < self.engine.vocab_size:
            raise SessionError(f"token id {token_id!r} is not in the vocabulary (0 to {self.engine.vocab_size - 1}).")
        return self._append(token_id, True, self._processed(), self._rng.get_state())

    def undo(self) -> PathToken:
        """Take back the last token: crop the cache (no recomputation) and restore its distribution."""
        if not self._path:
            raise SessionError("Nothing to undo: the path is back at the prompt.")
        token = self._path.pop()
        self._panels.pop()
        self._running_text.pop()
        self._rng.set_state(self._rng_states.pop())
        self._strategies.pop()
        if self.finished:
            self.finished = None  # the ending token was never fed, so cache and logits already fit
        else:
            self._logits.pop()
            self.engine.crop(len(self.ids))
        self._moved()
        self.tree.up()
        return token

    def jump(self, node_id: int) -> None:
        """Go to any node of the tree: the shared start of the two paths stays cached, the rest is run
        again one token at a time, as it was first run, so every distribution is exactly as it was."""
        target = self.tree.path(node_id)
        root, nodes = target[0], target[1:]
        if list(root.prompt_ids) != self.prompt_ids:
            self._start(root.prompt, list(root.prompt_ids))
            self.tree.current = root.id
        shared = 0
        while shared < min(len(nodes), len(self._path)) and nodes[shared].token.token_id == self._path[shared].token_id:
            shared += 1
        while len(self._path) > shared:
            self.undo()
        for node in nodes[shared:]:
            self._check_can_choose()
            self._append(node.token.token_id, node.token.forced, self._processed(), self._rng.get_state(), replaying=True)
            if node.rng is not None:
                self._restore_sampler(node)

    def adopt(self, tree: Tree) -> None:
        """Take over a saved tree (same model) and go to its current node; on any failure the tree
        is not taken and SessionError says why."""
        if tree.current is None:
            raise SessionError("The saved session holds no prompt yet.")
        self._check_saved(tree)
        old = self.tree
        self.tree = tree
        try:
            self.jump(tree.current)
        except BaseException:
            self.tree = old
            raise

    def _check_saved(self, tree: Tree) -> None:
        """What a file can hold that only this model can judge: token ids in its vocabulary, prompts
        that fit its context (sampler states are checked as the jump sets them)."""
        for node in tree.nodes.values():
            ids = list(node.prompt_ids) if node.token is None else [node.token.token_id]
            if any(not 0 <= token_id < self.engine.vocab_size for token_id in ids):
                raise SessionError(f"Node {node.id} of the saved tree holds a token id outside this model's vocabulary.")
            if len(node.prompt_ids) >= self.engine.context_limit:
                raise SessionError(f"The saved prompt of node {node.id} is longer than this model's context.")

    # --- internals -------------------------------------------------------------------------------

    def _restore_sampler(self, node) -> None:
        try:
            self._rng.set_state(torch.frombuffer(bytearray(node.rng), dtype=torch.uint8))
        except (RuntimeError, ValueError):
            raise SessionError(f"Node {node.id} of the tree holds a sampler state this device's generator cannot take.") from None

    def _checked_prompt(self, prompt: str) -> list[int]:
        if not prompt:
            raise SessionError("The prompt is empty: type some text for the model to continue.")
        if (index := undecodable_at(prompt)) is not None:
            raise SessionError(f"The prompt is not valid UTF-8 text (character {index + 1} was a stray byte): give it as UTF-8.")
        return self._checked_ids(self.engine.encode(prompt))

    def _checked_ids(self, ids: list[int]) -> list[int]:
        if not ids:
            raise SessionError("The prompt gives no tokens: type some text for the model to continue.")
        if len(ids) >= self.engine.context_limit:
            raise SessionError(
                f"The prompt is {len(ids)} tokens long; this model reads at most {self.engine.context_limit}, "
                "and needs room for at least one new token. Shorten the prompt."
            )
        return ids

    def _check_can_choose(self) -> None:
        """Refuse before a prompt, after end-of-sequence, or at the context limit."""
        if not self.prompt_ids:
            raise SessionError("There is no prompt yet: set one first.")
        if self.finished == "eos":
            raise SessionError("The generation has ended (the model chose end-of-sequence). Undo to go on.")
        if self.finished:
            raise SessionError(
                f"The context limit of {self.engine.context_limit} tokens is reached. Undo, or start a shorter prompt."
            )

    def _scores(self) -> torch.Tensor:
        """The current logits after the strategy's processors (the logits when there are none).

        Once per position: the panel, the choice and the record of a step all use them, and some
        processors (n-gram blocking) walk the whole sequence. They run on a copy: some write in place.
        """
        if self._current_scores is None:
            logits = self._logits[-1]
            if self._processors:
                input_ids = torch.tensor([self.ids], dtype=torch.long, device=logits.device)
                logits = self._processors(input_ids, logits.clone()[None])[0]
            self._current_scores = logits
        return self._current_scores

    def _processed(self) -> torch.Tensor | None:
        """The processed scores when the strategy has processors: what the panel shows beside the model's."""
        return self._scores() if self._processors else None

    def _append(
        self, token_id: int, forced: bool, processed: torch.Tensor | None, rng_state: torch.Tensor, replaying: bool = False
    ) -> PathToken:
        """Run `token_id` to get the next distribution, then record it, scored by the raw model.
        `replaying`: walking a node of the tree again (a jump), whose record stays as it was made."""
        logits, panel = self._logits[-1], self.distribution
        logprob = float(self._logprobs()[token_id])
        shown = _on_panel(panel, token_id)  # usually there: its rank and processed probability are known
        if processed is None:
            processed_prob = None
        elif shown is not None:
            processed_prob = shown.processed_prob
        else:
            processed_prob = float(torch.softmax(processed, dim=-1)[token_id])
        ending = self._ending_after(token_id)
        if ending is None:
            self._logits.append(self._run_model_on(token_id))  # may raise: nothing has changed yet
        raw = self.engine.token_bytes(token_id)
        token = PathToken(
            token_id=token_id,
            text=bytes_to_text(raw),
            prob=math.exp(logprob),
            logprob=logprob,
            rank=rank_of(logits, token_id) if shown is None else shown.rank,
            forced=forced,
            processed_prob=processed_prob,
            raw=raw,
            piece=self._running_text.push(raw),
        )
        self._path.append(token)
        self._panels.append(panel)
        self._rng_states.append(rng_state)
        self._strategies.append(self._strategy)
        self.finished = ending
        self._moved()
        if replaying:
            self.tree.current = self.tree.child(self.tree.current, token_id)
        else:
            sampled = self._strategy.do_sample and not forced  # only a draw moves the sampler on
            made_by = "forced" if forced else self._strategy.describe()
            self.tree.advance(token, panel, made_by, _state_bytes(self._rng) if sampled else None)
        return token

    def _moved(self) -> None:
        """The path changed: what was computed for the old position no longer holds."""
        self._distribution = self._current_logprobs = self._current_scores = None
        self._ahead.clear()

    def _pieces(self) -> tuple[str, ...]:
        pieces = [token.piece for token in self._path]
        if pieces:
            pieces[-1] += self._running_text.unfinished()
        return tuple(pieces)

    def _logprobs(self) -> torch.Tensor:
        """Log-softmax of the current logits, computed once per position."""
        if self._current_logprobs is None:
            self._current_logprobs = torch.log_softmax(self._logits[-1], dim=-1)
        return self._current_logprobs

    def _run_model_on(self, token_id: int) -> torch.Tensor:
        if token_id in self._ahead:
            logits, cache_entry = self._ahead.pop(token_id)
            self.engine.attach(cache_entry)
            return logits
        return self.engine.feed([token_id])

    def _ending_after(self, token_id: int) -> str | None:
        if token_id in self.engine.eos_token_ids:
            return "eos"
        if len(self.ids) + 1 >= self.engine.context_limit:
            return "context limit"
        return None

    def _refeed(self, ids: list[int]) -> None:
        """Rebuild the cache for `ids` after a failed reset, so the old path stays usable."""
        self.engine.crop(0)
        if ids:
            self.engine.feed(ids)


def _on_panel(panel: Distribution, token_id: int) -> Candidate | None:
    return next((c for c in panel.candidates if c.token_id == token_id), None)


def _checked_choices(choices: int, vocab_size: int) -> int:
    if isinstance(choices, bool) or not isinstance(choices, int) or not 1 <= choices <= vocab_size:
        raise SettingsError(f"the number of candidates shown must be a whole number from 1 to {vocab_size} (got {choices!r}).")
    return choices


def _state_bytes(generator: torch.Generator) -> bytes:
    return generator.get_state().numpy().tobytes()
