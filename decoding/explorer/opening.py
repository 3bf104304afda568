"""Opening an exploration as the app and every command do: the engine (loaded with the collector
paused), the session file's keeper, the explorer, and a second model beside it; for the app, the
whole opening at a prompt (`open_exploration`), run on its model thread."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from decoding.core.chat import PromptRequest
from decoding.core.engine import Engine, Forks
from decoding.core.errors import TokenstepError, said
from decoding.core.grammar import compile_notes
from decoding.core.prompt import Prompt
from decoding.core.settings import Strategy
from decoding.core.steering import Steering
from decoding.engines import registry  # called as registry.load_engine: the one place a load goes through
from decoding.engines.registry import LoadOptions, named, shown_name
from decoding.engines.runtime import collector_paused
from decoding.explorer.explorer import Explorer, View
from decoding.records.keeper import SessionKeeper
from decoding.search.second import SecondModel

Progress = Callable[[str], object]  # what a load says it is doing
Warn = Callable[[str], object]  # a problem that leaves the exploration open, said to the person


class OpeningFailed(TokenstepError):
    """No exploration could be opened (the model did not load, or its first view failed); says why."""


def open_explorer(
    options: LoadOptions,
    strategy: Strategy = Strategy(),
    choices: int = 10,
    *,
    max_new_tokens: int | Callable[[Engine], int] = 256,
    progress: Progress = lambda text: None,
    keeper: SessionKeeper | None = None,
    exact_replay: bool = False,
) -> Explorer:
    """Load the model `options` name and open an explorer on it. `max_new_tokens` may depend on the
    engine (a trace's steps plus its prefill's tokens); `keeper` keeps the session file, if any."""
    with collector_paused():
        engine = registry.load_engine(options, progress)
    limit = max_new_tokens(engine) if callable(max_new_tokens) else max_new_tokens
    explorer = Explorer(engine, strategy, choices, max_new_tokens=limit, keeper=keeper)
    explorer.session.exact_replay = exact_replay
    return explorer


def add_second_model(explorer: Explorer, options: LoadOptions, progress: Progress = lambda text: None) -> str | None:
    """Load the second model `options` name beside the explorer's. The first model's exploration never
    depends on it: one that fails is left out, and the reason (also kept on the explorer) returned."""
    progress(f"loading the second model, {named(options)}")
    try:
        engine = registry.load_engine(options, lambda text: progress(f"second model: {text}"))
        name = f"{shown_name(options, engine)} ({engine.name})"
        explorer.add_second(SecondModel(engine, name), f"--model {explorer.engine.model_id}", f"--second-model {name}")
    except Exception as error:  # anything a load can raise: the first model goes on alone
        explorer.second_left_out = said(error)  # said where the second model would show, too
        return explorer.second_left_out
    return None


def add_draft_model(
    explorer: Explorer, options: LoadOptions, tokens: int, target: LoadOptions, progress: Progress = lambda text: None
) -> None:
    """Step by speculative decoding with the draft `options` name. TokenstepError, one line, if it
    cannot be the draft."""
    engine, name = load_draft(options, target, explorer.engine, progress)
    explorer.add_draft(engine, tokens, name)


def load_draft(options: LoadOptions, target: LoadOptions, target_engine: Engine, progress: Progress) -> tuple[Engine, str]:
    """The draft `options` name and its name to show: the target's own options give the same weights
    on a cache of their own. A load that fails names the draft's options (--draft-model, ...)."""
    if options == target and isinstance(target_engine, Forks):
        engine = target_engine.fork()
    else:
        progress(f"loading the draft model, {named(options)}")
        try:
            engine = registry.load_engine(options, lambda text: progress(f"draft model: {text}"))
        except TokenstepError as error:
            raise type(error)(re.sub(r"--(model|engine|url)\b", r"--draft-\1", str(error))) from None
    return engine, f"{shown_name(options, engine)} ({engine.name})"


@dataclass(frozen=True)
class Opening:
    """What the app opens an exploration with: the model, the strategy, the prompt (None: none yet,
    or a chat to be started by its first message), text forced after it, and a second model."""

    options: LoadOptions
    strategy: Strategy
    choices: int
    request: PromptRequest | None
    prefill: str | None = None
    second: LoadOptions | None = None
    max_new_tokens: int = 256
    exact_replay: bool = False
    steering: Steering | None = None
    draft: tuple[LoadOptions, int] | None = None  # speculative decoding's draft model, and its tokens a round


@dataclass(frozen=True)
class Opened:
    explorer: Explorer
    view: View  # the first one, with the panels asked for
    latency_ms: float  # opening at the prompt and the first view, after the load


def open_exploration(
    opening: Opening,
    keeper: SessionKeeper,
    panels: frozenset[str],
    progress: Progress,
    warn: Warn,
    clock: Callable[[], float] = time.perf_counter,
) -> Opened:
    """Load, add the second model, open at the prompt (or the kept tree), force the prefill and make
    the first view. A load that fails, or a first view, raises `OpeningFailed`; anything after the
    load (a second model left out, a prompt the model cannot take, a prefill) is warned, and the
    exploration opens all the same."""
    try:
        explorer = open_explorer(
            opening.options,
            opening.strategy,
            opening.choices,
            max_new_tokens=opening.max_new_tokens,
            progress=progress,
            keeper=keeper,
            exact_replay=opening.exact_replay,
        )
    except TokenstepError as error:
        raise OpeningFailed(str(error)) from None
    except Exception as error:  # a model that breaks transformers: say so, keep the app
        raise OpeningFailed(f"The model could not be loaded: {said(error)}") from None
    if opening.steering is not None:
        try:
            explorer.steer(opening.steering)
        except TokenstepError as error:  # a layer the model has not, an engine that cannot: it opens unsteered
            warn(f"The steering is left out: {error}")
    if opening.draft is not None:
        try:
            add_draft_model(explorer, *opening.draft, opening.options, progress)
        except Exception as error:  # anything a load can raise: the target steps alone
            warn(f"The draft model is left out: {said(error)}")
    if opening.second is not None and (left_out := add_second_model(explorer, opening.second, progress)) is not None:
        warn(f"The second model is left out: {left_out}")
    start = clock()  # the first panel, computed while the thread is warm; keys wait
    try:
        with compile_notes(progress):
            explorer.open(_first_prompt(explorer, opening.request, warn))
        if opening.prefill:
            explorer.force_text(opening.prefill)
    except Exception as error:  # a prompt the model cannot take, a session folder that fails: it still opens
        warn(said(error))
    try:
        view = explorer.view(panels)
    except Exception as error:
        raise OpeningFailed(f"The model loaded, but its first panel failed: {said(error)}") from None
    return Opened(explorer, view, 1000 * (clock() - start))


def _first_prompt(explorer: Explorer, request: PromptRequest | None, warn: Warn) -> Prompt | None:
    """The prompt to open at; a chat the model cannot take is warned and skipped (a message follows)."""
    if request is None or (request.chat and not request.text and not request.messages):
        return None  # a chat to be started with the first message sent
    try:
        return request.build(explorer.engine)
    except TokenstepError as error:
        warn(str(error))
        return None
