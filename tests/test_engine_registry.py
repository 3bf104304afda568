"""The engine registry: an engine is a module and one entry. A toy engine registered here (and nowhere
else) is an --engine choice with its help, runs a trace that records it, and replay finds it again by
the name the trace recorded; another engine's options are refused for it with one line."""

import json
import re
from pathlib import Path

import pytest

from decoding.engines.hf.load import Placement, load_transformers
from decoding.engines.registry import ENGINES, EngineEntry, registered
from tests.engines import TopOnly
from tui.cli import main

ROOT = Path(__file__).resolve().parent.parent


def load_toy(options, device, progress):
    """The tiny model seen as an engine that knows only each step's top 5 (as a server does)."""
    return TopOnly(load_transformers(options.model, device, options.dtype, Placement(), progress), 5)


TOY = EngineEntry("toy", "top-5", "the model's top 5 tokens a step, nothing more", load=load_toy)


@pytest.fixture
def toy():
    with registered(TOY):
        yield TOY
    assert "toy" not in ENGINES


def trace_args(model_dir, *args):
    return ["trace", "The quick brown", "--model", str(model_dir), "--device", "cpu", "--engine", "toy", *args]


def test_a_registered_engine_is_a_choice_with_its_help(capsys, tiny_model_dir, toy):
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    assert "toy: the model's top 5 tokens a step" in " ".join(capsys.readouterr().out.split())
    assert main(trace_args(tiny_model_dir, "--load-in", "8bit")) == 2
    assert capsys.readouterr().err.strip() == "tokenstep: --load-in is for --engine transformers (got --engine toy)."


def test_a_registered_engine_runs_a_trace_and_replay_finds_it_by_the_name_recorded(capsys, tiny_model_dir, tmp_path, toy):
    assert main(trace_args(tiny_model_dir, "--steps", "3", "--format", "json")) == 0
    out = capsys.readouterr().out
    record = json.loads(out)
    assert record["engine"] == "top-5" and record["model"] == str(tiny_model_dir)
    assert all(len(step["candidates"]) <= 5 for step in record["steps"])  # only the top 5 are known
    path = tmp_path / "trace.json"
    path.write_text(out)
    assert main(["replay", str(path), "--device", "cpu"]) == 0
    assert "all 3 steps agree" in capsys.readouterr().out


def test_an_engines_name_is_written_in_its_entry_and_its_own_package_only():
    quoted = {entry.option for entry in ENGINES.values()}
    names = "|".join(map(re.escape, quoted))
    pattern = re.compile(rf"""["']({names})["']""")
    found = {}
    for path in [path for folder in ("decoding", "tui") for path in (ROOT / folder).rglob("*.py")]:
        relative = path.relative_to(ROOT).as_posix()
        own = relative == "decoding/engines/registry.py" or any(
            relative.startswith(f"decoding/engines/{package}/") for package in ("hf", "llama", "server")
        )
        if not own and (names := set(pattern.findall(path.read_text()))):
            found[relative] = names
    assert found == {}
