"""The panel registry: a panel is a core function, a widget and one `PanelSpec`. A toy panel registered
the way a plug-in would (before the app is imported, in a fresh interpreter) gets its key, opens beside
the candidates and draws its value, computed by the core, in its own colours."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = r'''
import asyncio, json, math, sys
from rich.text import Text
from textual.widgets import Static
from decoding.explorer import panels as core_panels
from tui import panels as tui_panels

def surprise(explorer):
    """The chosen tokens' mean surprisal, in bits (a value the core computes, off the screen's thread)."""
    probs = [token.prob for token in explorer.session.path]
    return len(probs), sum(-math.log2(p) for p in probs) / max(1, len(probs))

COLOUR = "#af5fd7"

class SurprisePanel(Static):
    DEFAULT_CSS = "SurprisePanel { width: auto; height: auto; padding: 0 1; border: round $secondary; }"

    def show(self, value, view):
        count, bits = value
        self.update(Text(f"{count} tokens, {bits:.2f} bits each", style=f"bold {COLOUR}"))

core_panels.PANELS["surprise"] = surprise
tui_panels.register(tui_panels.PanelSpec("surprise", "u", "Surprise", "Mean surprisal of the path", SurprisePanel, "side"))

from tests.test_app import SIZE, make_app, settle  # the app is imported after the panel is registered
from tests.test_app_drawn import rows_of

async def main():
    app = make_app(sys.argv[1])
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=3000)  # a fresh interpreter: imports and the load take a few seconds
        await pilot.press("space", "space", "space")
        await settle(pilot)
        closed = app.query_one("#surprise").display
        await pilot.press("u")
        await settle(pilot)
        widget = app.query_one("#surprise")
        row = rows_of(app, widget)[0]
        said = row.text.strip()
        colours = row.colours(row.find(said), said)
        print(json.dumps({
            "closed_at_first": not closed,
            "said": said,
            "colours": sorted(str(colour.name) for colour in colours),
            "bold": all(style.bold for style in row.styles[row.find(said):row.find(said) + len(said)]),
            "probs": [token.prob for token in app.snapshot.path],
        }))

asyncio.run(main())
'''


def test_a_registered_panel_opens_on_its_key_and_draws_the_cores_value_in_its_colours(tiny_model_dir):
    done = subprocess.run(
        [sys.executable, "-c", PLUGIN, str(tiny_model_dir)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    bits = sum(-math.log2(p) for p in shown["probs"]) / len(shown["probs"])
    assert shown["closed_at_first"]
    assert shown["said"] == f"3 tokens, {bits:.2f} bits each"
    assert shown["colours"] == ["#af5fd7"] and shown["bold"]  # the panel's own style, every cell
