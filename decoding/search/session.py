"""The core state machine: a prompt, the tokens chosen after it, and the engine's cache of them.

Each step runs the model on the one new token (never the whole sequence again) and keeps one record:
the token, the next-token value that was on offer when it was chosen, and the sampler's state before
the choice. Undo crops the cache and puts that value back, so the panel is exactly what it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from decoding.core.chat import Turn
from decoding.core.engine import Engine, FeedsAlternatives, ScoresAnyToken, ScoresPositions, SetsAside, decode_continuation
from decoding.core.errors import SessionError, SettingsError
from decoding.core.processors import step_work
from decoding.core.prompt import Prompt, checked_ids, plain_prompt
from decoding.core.scores import NextToken, Scores
from decoding.core.settings import MAX_CHOICES, Strategy, choices_problem
from decoding.core.state import Distribution, Message, PathToken, ProcessorReport, Snapshot, TokenScore, TurnMark
from decoding.core.tokens import RunningText, TokenTexts, one_line
from decoding.search.positions import prompt_scores
from decoding.search.tree import Node, Tree

if TYPE_CHECKING:
    from decoding.core.grammar import GrammarState

DEFAULT_CHOICES = 10
# The last few steps keep their full scores (undo there is instant); older ones keep their panels only,
# so memory grows with the KV cache alone, and undoing to them feeds their token once more.
FULL_STEPS_KEPT = 4
NO_PROMPT = Prompt("", ())


@dataclass(frozen=True)
class Step:
    """One chosen token and what was on offer when it was chosen; or, in a chat, a whole turn (the next
    user message, fed at once), with what was on offer before it."""

    token: PathToken | None  # None for a turn
    offered: NextToken  # what was on offer before it, under the strategy in force then
    sampler_state: torch.Tensor  # before it
    turn: Turn | None = None
    finished_before: str | None = None  # a turn may follow an ended reply: undo ends it again
    # `offered` came from feeding the ids from this cache length up to the step (the token before it
    # alone, or a prompt's or a turn's prefill): feeding them again there gives the same scores.
    # None: not so (a turn after an ended reply is offered what the ending token was).
    fed_from: int | None = None

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.token.token_id,) if self.token is not None else self.turn.ids if self.turn is not None else ()


class Session:
    def __init__(self, engine: Engine, strategy: Strategy = Strategy(), choices: int = DEFAULT_CHOICES) -> None:
        self.engine = engine
        self._strategy = strategy
        self._choices = _checked_choices(choices, engine.vocab_size)
        self.prompt = NO_PROMPT
        self._steps: list[Step] = []
        self._next: NextToken | None = None  # the position after the path; None before a prompt
        self._running_text = RunningText()
        self._ahead: dict[int, tuple[Scores, object]] = {}  # token id -> (its next scores, its cache entries)
        self._rng = torch.Generator()  # made again on the scores' device at each start
        self._last_sampler_state: torch.Tensor | None = None  # see _sampler_state_now
        self.token_text = TokenTexts.of(engine)  # one token's own text, e.g. `<0xE2>` for a partial byte
        self.finished: str | None = None  # why no further token can be chosen: "eos" or "context limit"
        self.tree = Tree()  # every path walked from every prompt; the current path is tree.current's
        self._prompt_pieces: tuple[str, ...] = ()
        self._prompt_scores: tuple[TokenScore | None, ...] | None = None  # scored on first ask
        self._grammar: GrammarState | None = None  # the strategy's constraint, following the path
        self._next_fed_from: int | None = 0  # as Step.fed_from, for what is on offer now
        self.exact_replay = False  # walk recorded paths token by token, not in one pass (see `jump`)
        self._released = 0  # the steps before this one were released if they could be
        self.keep_scores_from: int | None = None  # steps from here keep their full scores (a second model reads them)

    # --- state -----------------------------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def choices(self) -> int:
        return self._choices

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    @property
    def path(self) -> tuple[PathToken, ...]:
        """The chosen tokens (a chat's turns apart)."""
        return tuple(step.token for step in self._steps if step.token is not None)

    @property
    def panels(self) -> tuple[Distribution, ...]:
        """The candidates that were on offer before each path token."""
        return tuple(step.offered.distribution for step in self._steps if step.token is not None)

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.prompt.ids)

    @property
    def generated_ids(self) -> list[int]:
        """The chosen tokens' ids (a chat's turns apart)."""
        return [token.token_id for token in self.path]

    @property
    def ids(self) -> list[int]:
        """Everything the model reads: the prompt, then every step's tokens (turns included)."""
        return self.prompt_ids + [token_id for step in self._steps for token_id in step.ids]

    def ids_before(self, index: int) -> list[int]:
        """What the model had read when it offered path token `index`: the prompt, the tokens before
        it and any chat turns between them."""
        return self._context_at(self.step_of(index))

    def step_of(self, index: int) -> int:
        """The step (chat turns are steps too) that chose path token `index`."""
        positions = [position for position, step in enumerate(self._steps) if step.token is not None]
        if not 0 <= index < len(positions):
            raise IndexError(f"there is no path token {index}")
        return positions[index]

    @property
    def reply_ids(self) -> list[int]:
        """The tokens chosen since the prompt or the last turn: the reply under way."""
        reply: list[int] = []
        for step in self._steps:
            reply = [] if step.token is None else [*reply, step.token.token_id]
        return reply

    @property
    def text(self) -> str:
        """Prompt and generation, decoded as one sequence so multi-token characters come out whole."""
        return self.engine.decode(self.ids)

    @property
    def generated_text(self) -> str:
        """What follows the prompt (a chat's later turns included), decoded as one sequence."""
        return decode_continuation(self.engine, self.prompt_ids, self.ids[len(self.prompt.ids) :])

    @property
    def sequence_logprob(self) -> float:
        """Sum of the chosen tokens' raw-model log-probabilities (the chapter's `sequence_logprob`)."""
        return sum(token.logprob for token in self.path)

    def conversation(self) -> tuple[Message, ...]:
        """A chat's messages so far: the prompt's, then each reply and turn, then the reply under way
        (its end token left out: the template closes a message itself)."""
        messages = list(self.prompt.messages)
        reply: list[int] = []

        def close_reply() -> None:
            while reply and reply[-1] in self._end_ids():
                reply.pop()
            messages.append(Message("assistant", self.engine.decode(reply)))

        for step in self._steps:
            if step.turn is not None:
                close_reply()
                messages.append(step.turn.message)
                reply = []
            elif step.token is not None:
                reply.append(step.token.token_id)
        if reply:
            close_reply()
        return tuple(messages)

    @property
    def next(self) -> NextToken | None:
        """The next token's scores and candidates; None before a prompt or once the generation ended."""
        return None if self.finished else self._next

    @property
    def distribution(self) -> Distribution | None:
        """The next token's candidates; None before a prompt is set or once the generation has ended."""
        return self.next.distribution if self.next is not None else None

    def snapshot(self) -> Snapshot:
        turns, before = [], 0
        for step in self._steps:
            if step.turn is not None:
                turns.append(TurnMark(before, step.turn.segments))
            else:
                before += 1
        return Snapshot(
            prompt=self.prompt.text,
            path=self.path,
            pieces=self._pieces(),
            distribution=self.distribution,
            finished=self.finished,
            strategy=self._strategy,
            constraint=self._grammar.state(self.ids) if self._grammar is not None else None,
            choices=self._choices,
            prompt_segments=self.prompt.segments,
            turns=tuple(turns),
            chat=self.prompt.form == "chat",
            panels=self.panels,
            prompt_pieces=self._prompt_pieces,
            prompt_scores=self._prompt_scores,
        )

    @property
    def scored_prompt(self) -> tuple[TokenScore | None, ...] | None:
        """The prompt's scores if already computed (None: not yet, or the engine cannot)."""
        return self._prompt_scores

    def score_prompt(self) -> tuple[TokenScore | None, ...] | None:
        """Every prompt token's log-probability, rank and entropy (the first token's: None), from the
        pass that read the prompt when the engine kept it, else one more. Asked for after the first
        panel is out, so a long prompt's first panel never waits for it. None: the engine cannot."""
        if self._prompt_scores is None and isinstance(self.engine, ScoresPositions) and self.prompt.ids:
            self._prompt_scores = prompt_scores(self.engine, self.prompt.ids)
        return self._prompt_scores

    def processor_report(self, index: int | None = None) -> ProcessorReport | None:
        """What each of the strategy's processors did to the candidates before path token `index`
        (default: the next token), under the strategy in force then. None when the strategy has no
        processors or there is no such step."""
        positions = [position for position, step in enumerate(self._steps) if step.token is not None]
        index = len(positions) if index is None else index
        if index == len(positions):
            return self.next.report() if self.next is not None else None
        if not 0 <= index < len(positions):
            return None
        return self.report_at(positions[index])

    def report_at(self, position: int) -> ProcessorReport | None:
        """The processors' report for step `position`: kept from when the step was made or released,
        else made once from its scores, fed again only when they were let go without one (a path
        read in one pass)."""
        offered = self._steps[position].offered
        if not offered.strategy.reshapes:
            return None
        if not offered.held and offered.kept_report is None:
            offered.keep(self.offered_at(position).report())
        return offered.report()

    def ids_before_step(self, position: int) -> list[int]:
        """The ids the model had read before step `position` (a chat's turns are steps too)."""
        return self._context_at(position)

    def _context_at(self, position: int) -> list[int]:
        """The ids the model had read before step `position`."""
        return self.prompt_ids + [token_id for step in self._steps[:position] for token_id in step.ids]

    # --- settings --------------------------------------------------------------------------------

    def set_strategy(self, strategy: Strategy) -> None:
        """Switch strategy; the path stays, the next token is seen anew under the new one.

        A new seed restarts the sampler from here, as if generation had been seeded at this point.
        """
        if strategy.constraint != self._strategy.constraint:
            grammar = self._grammar_for(strategy, len(self.prompt.ids))  # may raise: nothing changed yet
            if grammar is not None:
                grammar.follow(self.ids)  # refused if the path so far breaks it
            self._grammar = grammar
        if strategy.seed != self._strategy.seed:
            self._rng.manual_seed(strategy.seed)
        self._strategy = strategy
        self._review()

    def set_choices(self, choices: int) -> None:
        self._choices = _checked_choices(choices, self.engine.vocab_size)
        self._review()

    def _review(self) -> None:
        if self._next is not None:
            self._next = self._next.under(self._strategy, self._choices, self.ids, self._grammar)

    # --- commands --------------------------------------------------------------------------------

    def reset(self, prompt: Prompt | str) -> None:
        """Start again from `prompt` (text is made a plain prompt). An invalid prompt is refused and
        the path is kept."""
        prompt = plain_prompt(self.engine, prompt) if isinstance(prompt, str) else prompt
        self._start(Prompt(prompt.text, checked_ids(self.engine, prompt.ids), prompt.form, prompt.messages))
        self.tree.add_root(self.prompt.text, list(self.prompt.ids), self.prompt.form, self.prompt.messages)

    def reread(self) -> None:
        """Read the prompt and the path again from an empty cache (the engine's numbers changed
        under them: a new steering). The path and the tree stay; past steps keep their panels, the
        next one is the engine's new one."""
        if not self.prompt.ids:
            return
        here = self.tree.here
        self._start(self.prompt)
        self.tree.current = self.tree.path(here)[0].id  # at the root, as the empty path now is
        self.jump(here)

    def add_turn(self, turn: Turn, replaying: bool = False) -> None:
        """Feed a chat's next turn after the path (the ending token first, if the reply ended: it was
        never fed) on the same cache: nothing before it is computed again."""
        if self.prompt.form != "chat":
            raise SessionError("The next message follows a chat: start one first (its prompt is a conversation).")
        if self._grammar is not None:
            raise SessionError("A grammar constrains one reply: start a new conversation for the next message.")
        if self.finished == "context limit":
            self._can_choose()  # which says so
        if len(self.ids) + len(turn.ids) >= self.engine.context_limit:
            raise SessionError(f"The message does not fit in the model's context of {self.engine.context_limit} tokens.")
        before = self.engine.cached_length
        unfed = self.ids[before:]  # the ending token, after an ended reply
        offered = self._next
        assert offered is not None, "a chat has a prompt"
        scores = self.engine.feed([*unfed, *turn.ids])  # may raise: nothing has changed yet
        fed_from = self._next_fed_from if self.finished is None else None
        self._steps.append(Step(None, offered, self._sampler_state_now(), turn, self.finished, fed_from))
        self._running_text.push(turn.text.encode("utf-8"))
        self.finished = None
        self._ahead.clear()
        self._next, self._next_fed_from = self._offer(scores), before
        self._release_old()
        if replaying:
            self.tree.enter_turn(turn.ids)
        else:
            self.tree.add_turn(turn.text, list(turn.ids), (turn.message,))

    def new_grammar(self, strategy: Strategy) -> GrammarState | None:
        """A matcher of its own for the strategy's constraint over what follows the prompt (a future
        sampled beside the path follows it on its own)."""
        return self._grammar_for(strategy, len(self.prompt.ids))

    def _grammar_for(self, strategy: Strategy, start: int) -> GrammarState | None:
        """A matcher for the strategy's constraint over what follows `start` prompt tokens."""
        if strategy.constraint is None:
            return None
        from decoding.core.grammar import grammar_for

        return grammar_for(self.engine, strategy.constraint, start, sorted(self._end_ids()))

    def _start(self, prompt: Prompt) -> None:
        grammar = self._grammar_for(self._strategy, len(prompt.ids))  # may raise: nothing has changed yet
        old_ids = self.ids
        self.engine.crop(0)
        try:
            scores = self.engine.feed(list(prompt.ids))
        except BaseException:
            self._refeed(old_ids)
            raise
        self.prompt, self._steps, self._grammar = prompt, [], grammar
        self._prompt_pieces, self._prompt_scores = self._pieces_of(prompt.ids), None
        self.token_text.end_ids = self._end_ids()  # a chat's end-of-turn tokens end it too
        self._running_text = RunningText()
        # Sample on the scores' device, as generate() does, so the same seed gives the same tokens.
        self._rng = torch.Generator(device=scores.values.device)
        self._rng.manual_seed(self._strategy.seed)
        self.finished = None
        self._ahead.clear()
        self._next, self._next_fed_from, self._released = self._offer(scores), 0, 0

    def step(self) -> PathToken:
        """Choose the next token by the strategy and append it."""
        offered = self._can_choose()
        rng_state = self._sampler_state_now()
        try:
            return self._append(self._choose(offered), False, rng_state)
        except BaseException:
            self._rng.set_state(rng_state)
            raise

    def strategy_choice(self) -> int:
        """The token `step()` would choose now, without choosing it (the sampler's state is kept)."""
        rng_state = self._sampler_state_now()
        try:
            return self._choose(self._can_choose())
        finally:
            self._rng.set_state(rng_state)

    def choose_now(self) -> int:
        """The strategy's choice here, drawn as `step` draws it (the sampler moves on), not appended."""
        return self._choose(self._can_choose())

    def draw(self, probs: torch.Tensor) -> int:
        """A draw from `probs` with the session's seeded sampler (a speculative round's)."""
        with step_work():
            return int(torch.multinomial(probs.to(self._rng.device), 1, generator=self._rng))

    def uniform(self) -> float:
        """A number drawn uniformly from [0, 1) with the session's seeded sampler."""
        return float(torch.rand(1, generator=self._rng, device=self._rng.device))

    def take(self, token_id: int, scores_after: Scores | None = None, entry: object = None) -> PathToken:
        """Append `token_id` as the strategy's choice made elsewhere (a speculative round's), its next
        scores and cache entry already computed (`entry`, from the engine's `detach_last`; none for
        a token that ends the path, which is never fed)."""
        self._can_choose()
        if scores_after is not None:
            self._ahead = {token_id: (scores_after, entry)}
        return self._append(token_id, False, self._sampler_state_now())

    def force(self, token_id: int) -> PathToken:
        """Append any token of the vocabulary, whatever the strategy would have chosen."""
        self._can_choose()
        if not isinstance(token_id, int) or not 0 <= token_id < self.engine.vocab_size:
            raise SessionError(f"token id {token_id!r} is not in the vocabulary (0 to {self.engine.vocab_size - 1}).")
        if self._grammar is not None and not self._grammar.allowed(self.ids)[token_id]:
            text = one_line(self.token_text(token_id))
            raise SessionError(f"The grammar cannot continue with {text!r} here ({self._grammar.state(self.ids)}).")
        return self._append(token_id, True, self._sampler_state_now())

    def undo(self) -> Step:
        """Take back the last token (or a chat's last turn): crop the cache (no recomputation) and
        restore what was on offer."""
        if not self._steps:
            raise SessionError("Nothing to undo: the path is back at the prompt.")
        step = self._steps.pop()
        self._running_text.pop()
        self._rng.set_state(step.sampler_state)
        self.finished, self._released = step.finished_before, min(self._released, len(self._steps))
        if step.offered.held:
            self._next = step.offered
            self.engine.crop(len(self.ids) - (1 if self.finished else 0))  # an ending token is never fed
        else:  # its scores again: what was fed to make them fed once more on the cached prefix
            assert step.fed_from is not None, "only steps whose scores can be made again are released"
            self.engine.crop(step.fed_from)
            self._next = step.offered.rescored(self.engine.feed(self.ids[step.fed_from :]), self.ids)
        self._next_fed_from = step.fed_from
        if (self._next.strategy, self._next.choices) != (self._strategy, self._choices):
            self._review()  # the settings changed since: what is on offer now is seen under the new ones
        self._ahead.clear()
        self.tree.up()
        return step

    def look_ahead(self, token_ids: Sequence[int], should_stop: Callable[[], bool] = lambda: False) -> None:
        """Run the model ahead for each of `token_ids`, so choosing one of them later is instant.

        One forward pass each, exactly the one `step`/`force` would run, so the results are the same
        to the bit. `should_stop` is asked between passes: work ahead never delays what a person asks
        for by more than the pass in flight. The work is dropped as soon as the path changes.
        """
        engine = self.engine
        if not isinstance(engine, SetsAside):
            return
        wanted = [t for t in dict.fromkeys(token_ids) if t not in self._ahead and not self.finished and not self._ending_after(t)]
        if isinstance(engine, FeedsAlternatives):  # all at once: a server answers them concurrently
            if wanted and not should_stop():
                self._ahead.update(zip(wanted, engine.feed_alternatives(wanted)))
            return
        for token_id in token_ids:
            if should_stop():
                return
            if token_id in self._ahead or self.finished or self._ending_after(token_id):
                continue
            scores = self.engine.feed([token_id])
            self._ahead[token_id] = (scores, engine.detach_last(1))

    @property
    def looked_ahead(self) -> frozenset[int]:
        """The tokens whose next distribution is already computed."""
        return frozenset(self._ahead)

    def jump(self, node_id: int) -> None:
        """Go to any node of the tree: the shared start of the two paths stays cached, the rest is read
        in one pass per run of tokens (a turn of a chat is a pass of its own). Past steps show their
        saved panels; the scores after the pass may differ from a token-by-token run's by rounding
        (docs/sessions.md gives the tolerance). `exact_replay`: token by token, as the path was first made, so
        every distribution is the same to the bit."""
        target = self.tree.path(node_id)
        root, nodes = target[0], target[1:]
        if root.prompt_ids != self.prompt.ids:
            self._start(Prompt(root.prompt, checked_ids(self.engine, root.prompt_ids), root.form, root.messages))
            self.tree.current = root.id
        shared = 0
        while shared < min(len(nodes), len(self._steps)) and nodes[shared].ids == self._steps[shared].ids:
            shared += 1
        while len(self._steps) > shared:
            self.undo()
        for run in _runs(nodes[shared:]):
            if run[0].token is None:  # a chat's turn
                self.add_turn(Turn(run[0].messages[-1], run[0].prompt, run[0].prompt_ids), replaying=True)
            elif self.exact_replay or any(node.panel is None for node in run):
                for node in run:
                    self._replay(node)
            else:
                self._read_run(run)

    def _feed_run(self, ids: list[int]) -> Scores:
        """Feed a run of path tokens. Right after a prompt shorter than the run, the prompt is read
        again with them from an empty cache: attention then takes its causal fast path (1.3x faster
        for 2,000 tokens here than the same tokens after a cached 4-token prompt). After a prompt as
        long as the run or longer, reading it again would cost more than the fast path saves (a
        chat's 1,000-token prompt is ~2 s here)."""
        prompt = list(self.prompt.ids)
        if self._steps or self.engine.cached_length != len(prompt) or len(prompt) >= len(ids):
            return self.engine.feed(ids)
        self.engine.crop(0)
        try:
            return self.engine.feed(prompt + ids)
        except BaseException:
            self._refeed(prompt)
            raise

    def _replay(self, node: Node) -> None:
        """Walk one recorded token again, as it was first run."""
        self._can_choose()
        self._append(node.token_id, node.forced, self._sampler_state_now(), replaying=True)
        if node.rng is not None:
            self._restore_sampler(node)

    def _read_run(self, run: list[Node]) -> None:
        """Walk recorded tokens in one forward pass over them: each step keeps its saved panel and
        token record, the sampler its saved states; nothing changes if the pass fails."""
        offered = self._can_choose()
        start, fed_from = len(self.ids), self._next_fed_from
        steps: list[Step] = []
        states, ending = [self._sampler_state_now()], None
        for index, node in enumerate(run):
            assert node.token is not None and node.panel is not None, "a run of tokens with their panels"
            if ending is not None:
                raise SessionError(f"Node {node.id} of the tree follows the end of its path.")
            if index or fed_from is not None:  # its saved panel, as every past step shows (the scores: on undo)
                offered = NextToken.shown(node.panel, self._strategy, self._choices, self.token_text, self._grammar)
                fed_from = start + index - 1 if index else fed_from
            steps.append(Step(node.token, offered, states[-1], fed_from=fed_from))
            states.append(self._sampler_state(node) if node.rng is not None else states[-1])
            ending = self.ending_after(node.token_id, start + index)
        fed = [node.token_id for node in run][: len(run) - (ending is not None)]  # an ending token is never fed
        scores = self._feed_run(fed) if fed else None  # may raise: nothing has changed yet
        for step in steps:
            assert step.token is not None
            self._steps.append(step)
            self._running_text.push(step.token.raw)
            self.tree.enter(step.token.token_id)
        self._rng.set_state(states[-1])
        self.finished = ending
        self._ahead.clear()
        if scores is None:
            return
        context = self.ids[: start + len(fed)]
        if ending:  # the ending step's offer, from the pass, is what stays on offer
            self._steps[-1] = replace(self._steps[-1], offered=self._steps[-1].offered.rescored(scores, context), fed_from=start)
            self._next = self._steps[-1].offered
        else:
            self._next, self._next_fed_from = self._offer(scores), start
        self._release_old()

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

    # --- internals -------------------------------------------------------------------------------

    def offered_at(self, position: int) -> NextToken:
        """What was on offer before step `position`, its full scores computed again if released."""
        offered = self._steps[position].offered
        if offered.held:
            return offered
        fed_from = self._steps[position].fed_from
        if fed_from is None:  # a turn after an ended reply: offered what the ending token was
            assert position and self._steps[position - 1].offered is offered, "only such steps have no fed_from"
            return self.offered_at(position - 1)
        ids = self._context_at(position)
        engine = self.engine
        assert isinstance(engine, SetsAside), "only such engines release scores"
        tail = engine.detach_last(engine.cached_length - fed_from)  # the positions after it, set aside
        try:
            scores = engine.feed(ids[fed_from:])
        finally:
            engine.crop(fed_from)
            engine.attach(tail)
        return offered.rescored(scores, ids)

    def _release_old(self) -> None:
        """Steps older than the last few keep their panels and processor reports only, where their
        scores can be computed again exactly (see Step.fed_from) and nobody waits to read them
        (`keep_scores_from`)."""
        if not isinstance(self.engine, SetsAside):
            return
        end = len(self._steps) - FULL_STEPS_KEPT
        if self.keep_scores_from is not None:
            end = min(end, self.keep_scores_from)
        if self._released >= end:
            return
        while self._released < end:
            step = self._steps[self._released]
            if (
                step.fed_from is not None
                and step.offered.held
                and step.offered.scores.complete
                and step.offered is not self._next
            ):
                step.offered.release()
            self._released += 1

    def _offer(self, scores: Scores) -> NextToken:
        return NextToken(scores, self._strategy, self._choices, self.token_text, self.ids, self._grammar)

    def _can_choose(self) -> NextToken:
        """What is on offer now; refused before a prompt, after end-of-sequence, or at the context limit."""
        if self._next is None:
            raise SessionError("There is no prompt yet: set one first.")
        if self.finished == "eos":
            raise SessionError("The generation has ended (the model chose end-of-sequence). Undo to go on.")
        if self.finished:
            raise SessionError(
                f"The context limit of {self.engine.context_limit} tokens is reached. Undo, or start a shorter prompt."
            )
        return self._next

    def _choose(self, offered: NextToken) -> int:
        if offered.nothing_left:
            raise SessionError(offered.nothing_left)
        return offered.choose(self._rng)

    def _append(self, token_id: int, forced: bool, rng_state: torch.Tensor, replaying: bool = False) -> PathToken:
        """Run `token_id` to get the next position's scores, then record it, scored by the raw model.
        `replaying`: walking a node of the tree again (a jump), whose record stays as it was made."""
        offered = self._can_choose()
        logprob = offered.logprob(token_id)
        if logprob is None:
            logprob = self._logprob_beyond_known(token_id)
        ending = self._ending_after(token_id)
        scores = None if ending else self._run_model_on(token_id)  # may raise: nothing has changed yet
        raw = self.engine.token_bytes(token_id)
        token = offered.path_token(token_id, forced, raw, self._running_text.push(raw), logprob)
        self._steps.append(Step(token, offered, rng_state, fed_from=self._next_fed_from))
        self.finished = ending
        self._ahead.clear()
        if scores is not None:
            self._next, self._next_fed_from = self._offer(scores), len(self.ids) - 1
        self._release_old()
        if replaying:
            self.tree.enter(token_id)
        else:
            sampled = self._strategy.do_sample and not forced  # only a draw moves the sampler on
            made_by = "forced" if forced else self._strategy.describe()
            self.tree.advance(token, offered.distribution, made_by, _state_bytes(self._rng) if sampled else None)
        return token

    def _logprob_beyond_known(self, token_id: int) -> float:
        """A token outside the top N an engine returned: its log-probability, if the engine can tell it."""
        if isinstance(self.engine, ScoresAnyToken):
            return self.engine.logprob_of(token_id)
        raise SessionError(
            f"The {self.engine.name} engine returned only its top {self._can_choose().scores.known} tokens here, and "
            f"{self.token_text(token_id)!r} is not among them: its probability cannot be known, so it cannot be forced."
        )

    def _pieces_of(self, ids: Sequence[int]) -> tuple[str, ...]:
        text = RunningText()
        pieces = [text.push(self.engine.token_bytes(token_id)) for token_id in ids]
        if pieces:
            pieces[-1] += text.unfinished()
        return tuple(pieces)

    def _pieces(self) -> tuple[str, ...]:
        pieces = [token.piece for token in self.path]
        if pieces:
            pieces[-1] += self._running_text.unfinished()
        return tuple(pieces)

    def _run_model_on(self, token_id: int) -> Scores:
        if token_id in self._ahead:
            scores, cache_entry = self._ahead.pop(token_id)
            engine = self.engine
            assert isinstance(engine, SetsAside)  # only such engines work ahead
            engine.attach(cache_entry)
            return scores
        return self.engine.feed([token_id])

    def _end_ids(self) -> frozenset[int]:
        """What ends the path: generate()'s end-of-sequence ids, and in a chat any end-of-turn token."""
        engine = self.engine
        return engine.eos_token_ids | engine.end_of_turn_ids if self.prompt.form == "chat" else engine.eos_token_ids

    def _ending_after(self, token_id: int) -> str | None:
        return self.ending_after(token_id, len(self.ids))

    def ending_after(self, token_id: int, length: int) -> str | None:
        """Whether `token_id` after `length` ids ends the path, and why ("eos", "context limit")."""
        if token_id in self._end_ids():
            return "eos"
        if length + 1 >= self.engine.context_limit:
            return "context limit"
        return None

    def _refeed(self, ids: list[int]) -> None:
        """Rebuild the cache for `ids` after a failed start, so the old path stays usable."""
        self.engine.crop(0)
        if ids:
            self.engine.feed(ids)

    def _sampler_state_now(self) -> torch.Tensor:
        """The sampler's state, as one tensor shared by the steps between two draws: a state is 5 KB,
        and every step keeps the state before it (for undo), greedy or not."""
        state = self._rng.get_state()
        if self._last_sampler_state is not None and torch.equal(state, self._last_sampler_state):
            return self._last_sampler_state
        self._last_sampler_state = state
        return state

    def _restore_sampler(self, node: Node) -> None:
        self._rng.set_state(self._sampler_state(node))

    def _sampler_state(self, node: Node) -> torch.Tensor:
        """The node's saved sampler state, checked against this session's generator."""
        assert node.rng is not None
        state = torch.frombuffer(bytearray(node.rng), dtype=torch.uint8)
        try:
            torch.Generator(device=self._rng.device).set_state(state)
        except (RuntimeError, ValueError):
            raise SessionError(f"Node {node.id} of the tree holds a sampler state this device's generator cannot take.") from None
        return state

    def _check_saved(self, tree: Tree) -> None:
        """What a file can hold that only this model can judge: token ids in its vocabulary, prompts
        and the path to the current node that fit its context (sampler states are checked as the
        jump sets them)."""
        for node in tree.nodes.values():
            ids = list(node.prompt_ids) if node.token is None else [node.token.token_id]
            if any(not 0 <= token_id < self.engine.vocab_size for token_id in ids):
                raise SessionError(f"Node {node.id} of the saved tree holds a token id outside this model's vocabulary.")
            if len(node.prompt_ids) >= self.engine.context_limit:
                raise SessionError(f"The saved prompt of node {node.id} is longer than this model's context.")
        length = sum(len(node.ids) for node in tree.path(tree.here))  # refused before a token of it is read
        if length > self.engine.context_limit:
            raise SessionError(
                f"The saved path is {length:,} tokens long, and this model reads at most {self.engine.context_limit:,}."
            )


def _runs(nodes: list[Node]) -> list[list[Node]]:
    """The nodes as runs of tokens, each turn a run of its own."""
    runs: list[list[Node]] = []
    for node in nodes:
        if node.token is None or not runs or runs[-1][0].token is None:
            runs.append([node])
        else:
            runs[-1].append(node)
    return runs


def _checked_choices(choices: int, vocab_size: int) -> int:
    most = min(MAX_CHOICES, vocab_size)
    if choices_problem(choices) or choices > most:
        raise SettingsError(f"the number of candidates shown must be a whole number from 1 to {most} (got {choices!r}).")
    return choices


def _state_bytes(generator: torch.Generator) -> bytes:
    return generator.get_state().numpy().tobytes()
