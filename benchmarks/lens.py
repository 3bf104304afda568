"""15. A step with the logit lens shown, against a plain step, on the embedded model (32 steps each).

Shown, each step's forward keeps its last position's hidden states (`output_hidden_states=True`);
the lens itself (the final norm and the head over the 31 layers, a [31, 576] x [576, 49,152] product,
reduced to the top tokens and the tracked tokens' ranks) is computed once the step's panel is out,
when the explorer catches up: timed apart, and with the step, as the model's thread spends it.
"""

from __future__ import annotations

from common import PROMPT, Result, best_of, load, seconds, table

STEPS = 32


def steps_seconds(explorer, panels: tuple[str, ...]) -> float:
    """Seconds a step to its panel (the step, then the view a screen shows)."""

    def run() -> None:
        explorer.new_prompt(PROMPT)
        explorer.view(panels)
        for _ in range(STEPS):
            explorer.step()
            explorer.view(panels)

    return best_of(run) / STEPS


def lens_seconds(explorer) -> float:
    """The median time the lens takes once a step's panel is out (the explorer catching up)."""
    explorer.new_prompt(PROMPT)
    times = []
    for _ in range(STEPS):
        explorer.step()
        explorer.view(("lens",))
        times.append(seconds(explorer.catch_up))
        assert explorer.lens is not None and explorer.lens.layers
    return sorted(times)[len(times) // 2]


def run() -> list[Result]:
    from decoding.explorer.explorer import Explorer

    explorer = Explorer(load())
    steps_seconds(explorer, ("lens",))  # warm-up
    plain = steps_seconds(explorer, ())
    shown = steps_seconds(explorer, ("lens",))
    lens = lens_seconds(explorer)
    closed = steps_seconds(explorer, ())
    table(
        "Logit lens: ms a step to its panel (step and view)",
        ["plain", "lens shown", "ratio", "the lens after it", "step + lens ratio", "lens closed again"],
        [[1000 * plain, 1000 * shown, shown / plain, 1000 * lens, (shown + lens) / plain, 1000 * closed]],
    )
    return [
        Result(
            "lens_step",
            shown / plain,
            "<",
            1.3,
            measured=f"a step to its panel with the logit lens shown: {1000 * shown:.0f} ms (the lens after it: {1000 * lens:.0f} ms)",
            baseline=f"a plain step: {1000 * plain:.0f} ms",
        )
    ]
