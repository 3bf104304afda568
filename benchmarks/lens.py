"""15. A step with the logit lens shown, against a plain step, on the embedded model (32 steps each).

Shown, each step's forward keeps its last position's hidden states (`output_hidden_states=True`) and
the view runs the final norm and the head over the 31 of them (a [31, 576] x [576, 49,152] product),
reduced to the top tokens and the tracked tokens' ranks. Closed, the step is the plain one.
"""

from __future__ import annotations

from common import PROMPT, Result, best_of, load, table

STEPS = 32


def steps_seconds(explorer, panels: tuple[str, ...]) -> float:
    def run() -> None:
        explorer.new_prompt(PROMPT)
        explorer.view(panels)
        for _ in range(STEPS):
            explorer.step()
            explorer.view(panels)  # what the app shows after each step

    return best_of(run) / STEPS


def run() -> list[Result]:
    from decoding.explorer import Explorer

    explorer = Explorer(load())
    steps_seconds(explorer, ("lens",))  # warm-up
    plain = steps_seconds(explorer, ())
    shown = steps_seconds(explorer, ("lens",))
    closed = steps_seconds(explorer, ())
    table(
        "Logit lens: ms a step (step and view)",
        ["plain", "lens shown", "ratio", "lens closed again", "ratio"],
        [[1000 * plain, 1000 * shown, shown / plain, 1000 * closed, closed / plain]],
    )
    return [Result("lens_step", shown / plain, "<", 1.3)]  # closed is the plain step's code: printed, not a target
