"""`tokenstep trace` and replay's second run: a plan of steps carried out on an explorer, and its record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from decoding.core.prompt import Prompt

if TYPE_CHECKING:  # the command line reads a plan's options before torch is imported
    from decoding.explorer.explorer import Explorer


@dataclass(frozen=True)
class TracePlan:
    prompt: str | Prompt  # text is taken as a plain prompt
    steps: int
    picks: Sequence[int] = ()  # per step, the rank of the candidate to force; then the strategy goes on
    prefill: str = ""  # text forced first, token by token (a reply's start)
    lens: bool = False  # each step's logit lens in the record


def run_trace(explorer: Explorer, plan: TracePlan, steps_as_written: bool = False) -> dict[str, Any]:
    """Start `explorer` at the plan's prompt (and its prefill), take its steps (at most: the
    generation may end first), and return the full JSON-ready record: the path's, or under beam
    search the search's. `steps_as_written`: a path's steps made as `json_chunks` writes them."""
    explorer.new_prompt(plan.prompt)
    if plan.prefill:
        explorer.force_text(plan.prefill)
    for index in range(plan.steps):
        if not explorer.can_play_on():
            break
        if index < len(plan.picks):
            explorer.pick(plan.picks[index])
        else:
            explorer.step()
    record = explorer.trace_record(steps_as_written and not plan.lens)  # the lens adds to each step's record
    if plan.lens:
        from decoding.search.lens import add_lens  # torch: only when asked for

        add_lens(explorer.session, record)
    return record
