"""The sampler registry: a sampler is one entry, and everything that takes, shows or records a strategy
reads it. A toy sampler registered here (and nowhere else) reaches the command line, the settings
screen, the processor view, a trace, replay, compare and session files."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from rich.color import Color
from transformers import LogitsProcessor

from decoding.core.samplers import SAMPLERS, Sampler, number_from, registered
from decoding.core.settings import Strategy, parse_strategies
from tests.test_app import SIZE, make_app, settle
from tests.test_app_drawn import drawn, rows_of
from tui.cli import main
from tui.widgets.processors import ProcessorPanel

ROOT = Path(__file__).resolve().parent.parent


class LogitGap(LogitsProcessor):
    """Rules out every token whose logit is more than `gap` below the best one's."""

    def __init__(self, gap: float) -> None:
        self.gap = gap

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        best = scores.max(dim=-1, keepdim=True).values
        return scores.masked_fill(scores < best - self.gap, float("-inf"))


LOGIT_GAP = Sampler(
    name="logit_gap",
    off=0.0,
    valid=number_from(0.0, 50.0),
    requirement="must be a number from 0 to 50; 0 is off",
    build=lambda gap, *_: LogitGap(gap),
    label="logit gap (0 = off)",
    short="gap",
    help="rule out tokens this many logits below the best; 0 = off",
    tag=lambda gap: f"gap={gap:g}",
)
GAP = 0.02  # the tiny random model's logits lie close together: this rules out some, not all


@pytest.fixture
def logit_gap():
    with registered(LOGIT_GAP):
        yield LOGIT_GAP
    assert "logit_gap" not in SAMPLERS


def trace_args(model_dir, *args):
    return ["trace", "The quick brown", "--model", str(model_dir), "--device", "cpu", *args]


def test_a_registered_sampler_is_an_option_with_its_checks(capsys, tiny_model_dir, logit_gap):
    with pytest.raises(SystemExit):
        main(trace_args(tiny_model_dir, "--help"))
    assert "--logit-gap" in capsys.readouterr().out
    assert main(trace_args(tiny_model_dir, "--logit-gap", "-1")) == 2
    assert capsys.readouterr().err.strip() == "tokenstep: --logit-gap must be a number from 0 to 50; 0 is off (got -1.0)"


def test_a_registered_sampler_runs_in_a_trace_and_its_replay_agrees(capsys, tiny_model_dir, tmp_path, logit_gap):
    assert main(trace_args(tiny_model_dir, "--logit-gap", str(GAP), "--steps", "3", "--format", "json")) == 0
    out = capsys.readouterr().out
    record = json.loads(out)
    assert record["strategy"]["logit_gap"] == GAP
    step = record["steps"][0]
    (effect,) = step["processors"]
    assert effect["name"] == "logit_gap" and 0 < effect["removed_in_all"]
    best = max(effect["probs_before"])
    expected = [c["token_id"] for c, p in zip(step["candidates"], effect["probs_before"]) if math.log(best / p) > GAP]
    assert effect["removed"] == expected and expected  # the candidates further than GAP below the best
    path = tmp_path / "trace.json"
    path.write_text(out)
    assert main(["replay", str(path), "--device", "cpu"]) == 0
    assert "all 3 steps agree" in capsys.readouterr().out


def test_a_registered_sampler_is_a_setting_everywhere_a_strategy_is_written(logit_gap):
    strategy = Strategy(logit_gap=0.5)
    assert strategy.logit_gap == 0.5 and strategy.active_processors() == ["logit_gap"]
    assert "gap=0.5" in strategy.describe()
    assert Strategy(**strategy.as_dict()) == strategy  # as session files write and read it
    assert parse_strategies("greedy:logit_gap=0.5") == [strategy]  # compare --strategies
    assert strategy.with_changes(logit_gap=0.0) == Strategy()  # off is the default


async def test_the_settings_screen_and_processor_view_show_a_registered_sampler(tiny_model_dir, logit_gap):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        app.screen.query_one("#logit_gap").focus()  # the form scrolls to the field focused
        await pilot.pause()
        assert any("logit gap (0 = off)" in row.text for row in drawn(app))
        app.screen.query_one("#logit_gap").value = str(GAP)
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.logit_gap == GAP
        await pilot.press("w")
        await settle(pilot)
        header, *rows = rows_of(app, app.query_one(ProcessorPanel))
        assert header.text.split()[:3] == ["token", "model", "gap"]
        ruled_out = [row for row in rows if "✗ gap" in row.text]
        red = Color.from_triplet(app.ansi_theme.ansi_colors[1])  # "red", as the terminal's theme paints it
        assert ruled_out and all(row.colours(row.find("✗ gap"), "✗ gap") == {red} for row in ruled_out)


def _names_used_in_code(path: Path) -> set[str]:
    """Sampler names read or given as code (an attribute, a keyword argument), not in text."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            used.add(node.arg)
    return used & set(SAMPLERS)


def test_a_samplers_name_is_written_in_its_entry_only():
    sources = [path for folder in ("decoding", "tui") for path in (ROOT / folder).rglob("*.py")]
    entry = ROOT / "decoding" / "core" / "samplers.py"
    assert {
        path.relative_to(ROOT).as_posix(): used for path in sources if path != entry and (used := _names_used_in_code(path))
    } == {}
    assert [path for path in sources if "repetition_penalty" in path.read_text()] == [entry]
