"""Opening an exploration as the app and every command do: the engine (loaded with the collector
paused), the session file's keeper, the explorer, and a second model beside it."""

from __future__ import annotations

from collections.abc import Callable

from decoding.core.engine import Engine
from decoding.core.errors import said
from decoding.core.settings import Strategy
from decoding.engines import registry  # called as registry.load_engine: the one place a load goes through
from decoding.engines.registry import LoadOptions, named, shown_name
from decoding.engines.runtime import collector_paused
from decoding.explorer.explorer import Explorer
from decoding.records.keeper import SessionKeeper
from decoding.search.second import SecondModel

Progress = Callable[[str], object]  # what a load says it is doing


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
