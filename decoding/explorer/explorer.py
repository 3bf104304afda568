"""One exploration of one model: the path and its cache, the beam search while the strategy is beam
search, the tree of every branch walked, and the session file that keeps it.

Every decision a view needs made lives here: what a step, a pick, undo or play mean under the
strategy in force, when play stops, what an export holds. A view calls these (on one thread) and
shows the frozen `View` that `view()` returns; `tokenstep trace`, `compare` and `replay` drive the
same objects without a view.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from decoding.core.chat import conversation, next_turn
from decoding.core.engine import Engine, Forks, Interrupts, ReadsLayers, Steers
from decoding.core.errors import SessionError, TokenstepError
from decoding.core.files import write_atomically
from decoding.core.prompt import Prompt, chat_prompt, check_room, check_size, checked_text
from decoding.core.settings import CHAPTER_STRATEGIES, Strategy, parse_strategies
from decoding.core.state import AttributionView, BeamSnapshot, Lens, Message, Snapshot
from decoding.core.steering import Steering
from decoding.core.tokens import one_line
from decoding.explorer.panels import PANELS
from decoding.explorer.why import Unsteered, attribution_of, context_at, shown_step
from decoding.records import session_file
from decoding.records.compare import COMPARE_NEW_TOKENS, compare, comparison_record
from decoding.records.futures import FuturesRun
from decoding.records.keeper import SessionKeeper
from decoding.records.trace import add_draft_record, beam_trace_record, format_trace, second_model_record, trace_record
from decoding.search.beam import BeamSearch
from decoding.search.futures import Future, logprob_under, sample_futures
from decoding.search.lens import no_lens, session_lens
from decoding.search.outcomes import OutcomeRule, outcomes
from decoding.search.second import SecondModel, check_same_tokenizer
from decoding.search.session import Session
from decoding.search.speculative import Speculator, check_speculation


@dataclass(frozen=True)
class View:
    """Everything a view shows after a command, frozen: safe to hand from the model's thread to the UI."""

    snapshot: Snapshot
    beam: BeamSnapshot | None  # while the strategy is beam search
    panels: Mapping[str, object]  # the open panels' values, by name (decoding.explorer.panels)
    model: str  # the model, engine, device and dtype on one line
    steering: Steering | None = None
    layers: int | None = None  # decoder layers a steering can be added to (None: the engine cannot steer)


class Explorer:
    def __init__(
        self,
        engine: Engine,
        strategy: Strategy = Strategy(),
        choices: int = 10,
        *,
        max_new_tokens: int = 256,
        keeper: SessionKeeper | None = None,
    ) -> None:
        self.session = Session(engine, strategy, choices)
        self.keeper = keeper or SessionKeeper(None, None, lambda text: None)
        self.max_new_tokens = max_new_tokens
        self.beam: BeamSearch | None = None
        self.second: SecondModel | None = None  # a second model along the same path
        self.second_left_out: str | None = None  # why the second model asked for is not there
        self._cursor: int | None = None  # the past path token looked at; None: the live end
        self._lens_shown = False  # a view shows the logit lens: catch_up computes it
        self._lens: tuple[tuple[object, ...], Lens] | None = None  # (where it was computed, the lens)
        self._attribution: tuple[tuple[int, ...], AttributionView] | None = None  # (its context, it)
        self._unsteered: Unsteered | None = None  # while steering: the model without the vector
        self.draft: Speculator | None = None  # speculative decoding's draft model

    @property
    def cursor(self) -> int | None:
        """The past path token looked at (None: the live end); dropped when the path no longer reaches it."""
        if self._cursor is not None and (self.beam is not None or self._cursor >= len(self.session.path)):
            self._cursor = None
        return self._cursor

    @property
    def engine(self) -> Engine:
        return self.session.engine

    def open(self, prompt: str | Prompt | None) -> None:
        """Reopen the saved tree (or start at `prompt`), then keep the session file from now on.
        A prompt the model cannot take is refused (SessionError) and the exploration stays open."""
        try:
            self.keeper.open(self.session, prompt)  # may steer as the saved tree was
            self._follow_steering()
            self._restart_beam()
        finally:
            self.keeper.start(self.session)

    # --- choosing tokens -------------------------------------------------------------------------

    def step(self) -> None:
        """One step by the strategy: a token on the path, or one iteration of the beam search."""
        if self.beam is not None:
            self.beam.step()
        elif self.draft is not None:
            self.draft.step(self.session)
        else:
            self.session.step()

    def pick(self, row: int, beam_row: int = 0) -> int | None:
        """Force the candidate of panel row `row` (0-based); under beam search onto live beam
        `beam_row`. Returns the rank the forced beam then has (a view's highlight follows it)."""
        if self.beam is not None:
            if self.beam.ended:
                self.beam.step()  # which says that the search has ended
            candidates = self.beam.candidate_ids(beam_row)
            return self.beam.force(beam_row, _row(candidates, row))
        distribution = self.session.distribution
        if distribution is None:
            self.session.step()  # which says why nothing can be chosen
            return None
        self.session.force(_row([c.token_id for c in distribution.candidates], row))
        return None

    def force(self, token_id: int) -> None:
        """Force any token of the vocabulary onto the path."""
        self.session.force(token_id)

    def undo(self) -> None:
        if self.beam is not None:
            self.beam.undo()
        else:
            self.session.undo()

    def can_play_on(self) -> bool:
        if self.beam is not None:
            return not self.beam.ended  # the search stops itself at max_new_tokens
        return not self.session.finished and len(self.session.path) < self.max_new_tokens

    def play(self, should_stop: Callable[[], bool], after_step: Callable[[int], None] = lambda steps: None) -> int:
        """Step until the end, the limit or `should_stop`, saving after every step (a kill loses at
        most the step in flight); `after_step(steps so far)` lets a view paint. Returns the steps taken."""
        if self.beam is None and len(self.session.path) >= self.max_new_tokens:
            raise SessionError(f"The path already has {len(self.session.path)} new tokens, the --max-new-tokens limit.")
        if self.beam is not None and self.beam.ended:
            raise SessionError(f"The beam search has ended ({self.beam.ended}). Undo, or start again.")
        steps = 0
        while not should_stop() and self.can_play_on():
            self.step()
            self.save()
            steps += 1
            after_step(steps)
        return steps

    def look_ahead(self, count: int, should_stop: Callable[[], bool]) -> None:
        """While a person reads: the next panel for the strategy's choice and the top `count` candidates."""
        distribution = self.session.distribution
        if distribution is None or self.beam is not None or not count:
            return
        ranked = [c.token_id for c in distribution.candidates[:count]]
        self.session.look_ahead([self.session.strategy_choice(), *ranked], should_stop=should_stop)

    def look(self, index: int | None) -> None:
        """Look at path token `index` (its stored panel, no model work); None: back to the live end."""
        if index is not None and self.beam is not None:
            raise SessionError("Past steps are looked at on a single path: beam search shows its beams instead.")
        if index is not None and not 0 <= index < len(self.session.path):
            raise SessionError(f"There is no step {index + 1}: the path has {len(self.session.path)} tokens.")
        self._cursor = index

    def move_cursor(self, delta: int) -> None:
        """Move the cursor `delta` tokens over the path; past the last one is the live end again
        (beam search shows its beams instead, and has no cursor)."""
        if not self.session.path or self.beam is not None:
            return
        length = len(self.session.path)
        index = max(0, min((length if self._cursor is None else self._cursor) + delta, length))
        self.look(None if index == length else index)

    def pick_at(self, index: int, row: int) -> None:
        """Branch at path token `index`: force row `row` of the panel that was on offer there. The old
        path stays in the tree; the cursor goes back to the live end."""
        self.look(index)
        session = self.session
        while len(session.path) > index:
            session.undo()  # crops the cache and restores each panel exactly; the tree keeps the nodes
        self._cursor = None
        self.pick(row)

    # --- work after a command's view is out ---------------------------------------------------------

    def catch_up(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Model work a view can wait for: the prompt's scores (heat views), the second model's
        scores of the path so far. False when there was nothing to do."""
        changed = False
        session = self.session
        if session.prompt_ids and session.scored_prompt is None and not should_stop():
            changed = session.score_prompt() is not None
        if self.second is not None and not should_stop():
            changed = self.second.follow(session, should_stop) or changed
        if self._lens_shown and self.lens is None and not should_stop():
            self._lens = (self._lens_key(), self._lens_here())
            changed = True
        if self._unsteered is not None and self.beam is None and not should_stop():
            changed = self._unsteered.read(shown_step(session, self.cursor)) or changed
        return changed

    def _lens_here(self) -> Lens:
        """The lens where the explorer stands: the step under its cursor, or the next token."""
        if self.beam is not None:
            return no_lens("beam search runs several sequences: the lens follows one path (switch to greedy or sampling)")
        return session_lens(self.session, self.cursor)

    @property
    def lens(self) -> Lens | None:
        """The logit lens computed for where the explorer stands now; None: not (yet) computed."""
        return self._lens[1] if self._lens is not None and self._lens[0] == self._lens_key() else None

    def _lens_key(self) -> tuple[object, ...]:
        session = self.session
        candidates = tuple(c.token_id for c in session.distribution.candidates) if session.distribution else ()
        return (tuple(session.ids), self.cursor, self.beam is not None, candidates)

    def add_second(self, second: SecondModel, first_name: str, second_name: str) -> None:
        """Set a second model along the path; it must read text with the same tokenizer (the names
        say in a refusal which model is which)."""
        check_same_tokenizer(self.engine, second.engine, first_name, second_name)
        self.second = second

    def add_draft(self, draft: Engine, tokens: int, name: str) -> None:
        """Step by speculative decoding: `draft` proposes `tokens` tokens a round, this model checks
        them in one pass. The two must read text with one tokenizer."""
        check_speculation(self.engine, self.session.strategy, tokens)
        check_same_tokenizer(self.engine, draft, f"--model {self.engine.model_id}", f"--draft-model {name}")
        self.draft = Speculator(draft, tokens, name)

    def interrupt_waits(self, second_too: bool = False) -> None:
        """Cut short the server requests in flight, from any thread (esc, quitting): the command waiting
        on one fails at once. The second model's only when asked (it stops following on a failure); a
        draft's always (the round goes on without it)."""
        engines = [self.engine, *([self.second.engine] if second_too and self.second is not None else [])]
        if self.draft is not None:
            engines.append(self.draft.follower.engine)
        for engine in engines:
            if isinstance(engine, Interrupts):
                engine.interrupt()

    # --- where the path starts and goes -----------------------------------------------------------

    def new_prompt(self, prompt: str | Prompt) -> None:
        """Start again from `prompt` (text: a plain prompt); refused if the model cannot take it."""
        self.session.reset(prompt)
        self._restart_beam()

    def new_chat(self, messages: Sequence[Message]) -> None:
        """Start a conversation: `messages`, rendered by the model's own chat template, then the
        assistant's reply to step through."""
        self.new_prompt(chat_prompt(self.engine, messages))

    def say(self, content: str, system: str | None = None) -> None:
        """The person's next message. In a chat it continues the conversation on the same cache (the
        reply so far becomes the assistant's message); otherwise it starts one (after `system`)."""
        message = Message("user", content)
        session = self.session
        if session.prompt.form != "chat":
            return self.new_chat(conversation([message], system))
        if session.finished == "context limit":
            raise SessionError("The context is full: undo, or start a new conversation.")
        turn = next_turn(self.engine, session.conversation(), session.ids, session.text, message)
        session.add_turn(turn)
        self._restart_beam()

    def force_text(self, text: str) -> None:
        """Force the tokens of `text` one by one (a reply's start, say): each is shown as forced, with
        what the model would have chosen instead."""
        if self.beam is not None:
            raise SessionError("Text is forced onto a single path: switch from beam search to greedy or sampling first.")
        checked_text(text, "The text")
        check_size(self.engine, text, "The text")
        ids = self.engine.encode_piece(text)
        if not ids:
            raise SessionError("The text gives no tokens: type something to force.")
        check_room(self.engine, len(self.session.ids), len(ids), "The text")
        for token_id in ids:
            self.session.force(token_id)

    def apply_settings(self, strategy: Strategy, choices: int) -> None:
        """New settings; beam search (re)starts from the path as it stands. Refused as a whole if the
        engine cannot run it (the old settings stay)."""
        session = self.session
        old = session.strategy, session.choices
        session.set_strategy(strategy)
        session.set_choices(choices)
        try:
            self._restart_beam()
        except TokenstepError:
            session.set_strategy(old[0])
            session.set_choices(old[1])
            raise

    def switch(self, kind: str) -> None:
        """Another kind of strategy (greedy, sample, beam) with the other settings kept."""
        self.apply_settings(self.session.strategy.with_changes(kind=kind), self.session.choices)

    def jump(self, node_id: int) -> None:
        self.session.jump(node_id)
        self._restart_beam()

    def sibling(self, delta: int) -> None:
        """The sibling branch `delta` places away at the current depth."""
        tree = self.session.tree
        assert tree.current is not None, "a session with a prompt stands on a node"
        sibling = tree.sibling(tree.current, delta)
        if sibling == tree.current:
            raise SessionError("There is no other branch at this depth: [ and ] move between branches that fork here.")
        self.jump(sibling)

    def delete(self, node_id: int) -> None:
        """Remove a branch of the tree, never the one in use."""
        try:
            self.session.tree.delete(node_id)
        except ValueError:
            raise SessionError("That branch holds where you stand: jump elsewhere first, then delete it.") from None

    def _restart_beam(self) -> None:
        """Under the beam strategy, a new beam search from the path as it stands; else none."""
        session = self.session
        self.beam = None
        if session.strategy.is_beam and session.prompt_ids:
            self.beam = BeamSearch(
                session.engine,
                session.strategy,
                session.ids,
                max_new_tokens=self.max_new_tokens,
                choices=session.choices,
                constraint_start=len(session.prompt_ids),
            )

    # --- records ---------------------------------------------------------------------------------

    def compare(
        self, should_stop: Callable[[], bool], progress: Callable[[int, int], object], new_tokens: int = COMPARE_NEW_TOKENS
    ) -> dict:
        """The chapter's strategies from the current text, on a cache of their own (the path's is untouched)."""
        engine = self.engine
        if not isinstance(engine, Forks):
            raise SessionError(f"Comparing strategies needs a second cache, which the {engine.name} engine cannot make.")
        if not self.session.prompt_ids:
            raise SessionError("There is no prompt yet: set one first.")
        strategies = parse_strategies(CHAPTER_STRATEGIES, seed=self.session.strategy.seed)
        results = compare(engine.fork(), self.session.ids, strategies, new_tokens, should_stop, progress)
        return comparison_record(self.session.text, new_tokens, results)

    def futures(
        self,
        n: int,
        new_tokens: int,
        outcome: str | None = None,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        grown: Callable[[FuturesRun], object] = lambda run: None,
    ) -> FuturesRun:
        """`n` futures of up to `new_tokens` tokens from the cursor (or the end), each kept as a branch
        of the tree, and the outcomes they come to (`outcome`: a regular expression whose first
        capture group is the outcome; None: the first line, or in a chat the reply)."""
        session = self.session
        if self.beam is not None:
            raise SessionError("Futures are paths sampled one token at a time: switch from beam search to sample or greedy.")
        rule = OutcomeRule(outcome, chat=session.prompt.form == "chat")
        steps = session.step_of(self.cursor) if self.cursor is not None else len(session.steps)
        start = tuple(session.ids_before_step(steps)) if session.prompt.ids else ()

        def run_of(futures: list[Future], cancelled: bool = False) -> FuturesRun:
            return FuturesRun(tuple(futures), tuple(outcomes(futures, rule)), rule, new_tokens, start, cancelled=cancelled)

        futures = sample_futures(
            session, n, new_tokens, steps=steps, should_stop=should_stop, grown=lambda now: grown(run_of(now)), reads=rule
        )
        run = run_of(futures, cancelled=should_stop())
        if self.second is not None and not run.cancelled:
            scored = tuple(logprob_under(self.second.engine, start, future.ids) for future in futures)
            run = replace(run, second=(self.second.name, scored))
        return run

    def steer(self, steering: Steering | None) -> None:
        """Steer the model from now on (None: no more): the path is read again under it."""
        engine = self.engine
        if not isinstance(engine, Steers):
            raise SessionError(
                f"The {engine.name} engine cannot steer: its model does not run in this process. "
                "Steering needs --engine transformers (leave-one-out attribution works on every engine)."
            )
        engine.steer(steering)
        self._attribution = None  # its numbers were the old steering's
        self._follow_steering()
        self.session.reread()
        self._restart_beam()

    def _follow_steering(self) -> None:
        """While steered, the unsteered twin beside; not steered, none."""
        if self.steering is None:
            self._unsteered = None
        elif self._unsteered is None and isinstance(self.engine, Forks):
            self._unsteered = Unsteered(self.engine)

    @property
    def steering(self) -> Steering | None:
        return self.engine.steering if isinstance(self.engine, Steers) else None

    def nudge_steering(self, delta: float) -> None:
        """The steering's scale moved by `delta` (the path read again under it)."""
        if self.steering is None:
            raise SessionError("Nothing is steered: set a steering first (S).")
        self.steer(self.steering.with_scale(round(self.steering.scale + delta, 6)))

    def attribute(self, method: str, row: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """`method`'s attribution of panel row `row`'s candidate (at the step looked at, or the next
        token) over its context; views show it as a heat while that context stands."""
        if self.beam is not None:
            raise SessionError("Attribution follows one path: switch to greedy or sampling (beam search runs several).")
        self._attribution = attribution_of(self.session, self.cursor, method, row, should_stop)

    def _attribution_shown(self) -> AttributionView | None:
        if self._attribution is None or self.beam is not None:
            return None
        context, attribution = self._attribution
        return attribution if context_at(self.session, attribution.step) == context else None

    def trace_record(self, steps_as_written: bool = False) -> dict:
        """The current path (or the beam search so far) as a `tokenstep trace` record (see
        `trace_record` for `steps_as_written`)."""
        if self.beam is not None:
            return beam_trace_record(self.beam)
        record = trace_record(self.session, steps_as_written and self.draft is None)  # the draft adds to each step
        if self.second is not None:
            self.catch_up()
            record["second_model"] = second_model_record(self.second.view(self.session))
        if self.draft is not None:
            add_draft_record(record, self.draft.view(self.session), self.draft.follower.engine)
        return record

    def export(self, folder: Path) -> tuple[str, tuple[Path, ...]]:
        """The trace record as JSON (replayable), CSV and Markdown files; says where they went."""
        record = self.trace_record()
        if not record["steps"]:
            raise SessionError("Nothing to export yet: take a step first.")
        stem = folder / time.strftime("tokenstep-trace-%Y%m%d-%H%M%S")
        paths = tuple(stem.with_suffix(suffix) for suffix in (".json", ".csv", ".md"))
        for fmt, path in zip(("json", "csv", "markdown"), paths):
            write_atomically(path, format_trace(record, fmt) + "\n")
        what = "beam search" if self.beam is not None else "path"
        return f"Saved the {what} to {stem}.json, .csv and .md", paths

    def export_tree(self, folder: Path) -> tuple[str, tuple[Path, ...]]:
        """The whole tree as a session file (`tokenstep --session` opens it); says where it went."""
        path = folder / time.strftime("tokenstep-tree-%Y%m%d-%H%M%S.json")
        session = self.session
        session_file.save(path, session.tree, session.engine, session.strategy, session.choices, self.steering)
        return f"Saved the whole tree to {path} (a session file: tokenstep --session opens it)", (path,)

    def save(self) -> None:
        self.keeper.save(self.session)

    # --- what a view shows -------------------------------------------------------------------------

    def view(self, panels: Iterable[str] = ()) -> View:
        panels = tuple(panels)
        self._lens_shown = "lens" in panels
        if isinstance(self.engine, ReadsLayers):  # the next steps keep their layers while the lens is shown
            self.engine.keep_layers = self._lens_shown
        values = {name: PANELS[name](self) for name in panels}
        beam = self.beam.snapshot() if self.beam is not None else None
        second = self.second.view(self.session) if self.second is not None else None
        draft = self.draft.view(self.session) if self.draft is not None and beam is None else None
        snapshot = replace(
            self.session.snapshot(), cursor=self.cursor, second=second, attribution=self._attribution_shown(), draft=draft
        )
        if self.steering is not None:
            snapshot = replace(snapshot, steering=self.steering.describe())
            if self._unsteered is not None and beam is None:
                snapshot = self._unsteered.beside(snapshot, shown_step(self.session, self.cursor))
        model = model_line(self.engine)
        if self.second_left_out is not None:
            model += " │ second model left out"
        layers = self.engine.steerable_layers if isinstance(self.engine, Steers) else None
        return View(snapshot, beam, MappingProxyType(values), model, self.steering, layers)


def model_line(engine: Engine) -> str:
    """The model, engine, device and dtype on one line."""
    placement = getattr(engine, "placement", None)  # accelerate's device map, when it split the model
    where = f" · {placement}" if placement else ""
    return one_line(f"{_short_model_name(engine.model_id)} · {engine.name} · {engine.device} · {engine.dtype}{where}")


def _row(token_ids: list[int], row: int) -> int:
    if not 0 <= row < len(token_ids):
        raise SessionError(f"There is no row {row + 1}: the panel shows {len(token_ids)} candidates.")
    return token_ids[row]


def _short_model_name(model_id: str) -> str:
    """A local folder or file is shown by its name; a Hub id as it is."""
    path = Path(model_id).expanduser()
    return path.name if path.exists() else model_id
