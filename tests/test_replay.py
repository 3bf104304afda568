"""`tokenstep replay`: a saved trace run again says, step by step, whether the same things come out."""

import json
from dataclasses import replace

import pytest

from decoding.core.settings import Strategy
from decoding.explorer.explorer import Explorer
from tui.cli import main


def saved_trace(capsys, tiny_model_dir, tmp_path, *args):
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--format", "json"]
    assert main(["trace", "The quick brown", *common, *args]) == 0
    path = tmp_path / "trace.json"
    path.write_text(capsys.readouterr().out)
    return path


def replay(capsys, path, *args):
    code = main(["replay", str(path), "--device", "cpu", *args])
    return code, capsys.readouterr().out


def test_a_trace_replayed_on_its_model_agrees_at_every_step(capsys, tiny_model_dir, tmp_path):
    path = saved_trace(
        capsys, tiny_model_dir, tmp_path, "--strategy", "sample", "--top-k", "5", "--seed", "4", "--steps", "5", "--picks", "0,2"
    )
    record = json.loads(path.read_text())
    record["model"] = str(tiny_model_dir)
    path.write_text(json.dumps(record))
    code, out = replay(capsys, path)
    assert code == 0 and "all 5 steps agree" in out
    assert out.count(" same ") >= 5 and "forced" in out


def test_a_changed_probability_or_choice_is_reported_at_its_step(capsys, tiny_model_dir, tmp_path):
    path = saved_trace(capsys, tiny_model_dir, tmp_path, "--steps", "4", "--picks", "0,0,2")
    record = json.loads(path.read_text())
    record["model"] = str(tiny_model_dir)
    record["steps"][1]["candidates"][0]["prob"] += 0.01
    record["steps"][2]["chosen"]["forced"] = False  # as if greedy had chosen the third candidate
    path.write_text(json.dumps(record))
    code, out = replay(capsys, path)
    lines = out.splitlines()
    assert code == 1 and "2 of 4 steps differ: [2, 3]" in lines[-1]
    assert "1.00e-02" in lines[2] and "DIFFER" in lines[3] and "the trace" in lines[3]
    assert lines[4].split()[1:4:2] == ["same", "same"]  # back on the recorded path after the differing choice


def test_a_beam_trace_replays_its_beams(capsys, tiny_model_dir, tmp_path):
    path = saved_trace(capsys, tiny_model_dir, tmp_path, "--strategy", "beam", "--num-beams", "2", "--steps", "3")
    record = json.loads(path.read_text())
    record["model"] = str(tiny_model_dir)
    path.write_text(json.dumps(record))
    code, out = replay(capsys, path)
    assert code == 0 and "largest Δ score" in out


def test_a_file_that_is_not_a_trace_gets_one_clear_line(capsys, tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    assert main(["replay", str(path)]) == 2
    assert "is not a tokenstep JSON trace" in capsys.readouterr().err


# --- a strategy switched along the path (the app's palette, then `e`) ------------------------------


def switched_export(engine, parts):
    """The app's way: a strategy, some steps, another strategy (a switch or new settings), more
    steps, then `e`. `parts`: (strategy, steps) in turn."""
    explorer = Explorer(engine, parts[0][0])
    explorer.new_prompt("The river flows")
    for strategy, steps in parts:
        explorer.apply_settings(strategy, explorer.session.choices)
        for _ in range(steps):
            explorer.step()
    return explorer.trace_record()


GREEDY_HOT = Strategy(temperature=1.5)  # `tokenstep --temperature 1.5`: greedy, until a switch to sampling
SAMPLE_HOT = Strategy(kind="sample", temperature=1.5)


@pytest.mark.embedded
@pytest.mark.parametrize(
    "parts, switched_at",
    [
        ([(GREEDY_HOT, 6), (SAMPLE_HOT, 4)], [1, 7]),  # the issue's: greedy, "Switch to sampling", e
        ([(SAMPLE_HOT, 5), (GREEDY_HOT, 3)], [1, 6]),
        ([(SAMPLE_HOT, 3), (GREEDY_HOT, 2), (SAMPLE_HOT, 3)], [4, 6]),  # the sampler goes on where it was
        ([(replace(SAMPLE_HOT, seed=3), 4), (replace(SAMPLE_HOT, seed=8), 4)], [1, 5]),  # a new seed restarts it
    ],
)
def test_an_export_made_around_a_strategy_switch_replays_every_step(capsys, embedded_engine, tmp_path, parts, switched_at):
    record = switched_export(embedded_engine, parts)
    steps = record["steps"]
    assert [number for number, step in enumerate(steps, 1) if "strategy" in step] == switched_at
    for number in switched_at:  # each says how it (and the steps after it) was made
        made_under = parts[_part_of(parts, number)][0]
        assert steps[number - 1]["strategy"] == made_under.generation_kwargs()
        assert steps[number - 1]["seed"] == made_under.seed
    path = tmp_path / "switched.json"
    path.write_text(json.dumps(record))
    code, out = replay(capsys, path)
    assert code == 0 and f"all {len(steps)} steps agree" in out


def _part_of(parts, number):
    """Which of `parts` made step `number` (1-based)."""
    end = 0
    for index, (_, steps) in enumerate(parts):
        end += steps
        if number <= end:
            return index
    raise AssertionError(number)


@pytest.mark.embedded
def test_a_sampling_trace_made_by_the_command_still_replays(capsys, tmp_path):
    common = ["--strategy", "sample", "--temperature", "1.5", "--seed", "5", "--device", "cpu", "--format", "json"]
    assert main(["trace", "The river flows", "--steps", "6", *common]) == 0
    path = tmp_path / "sampled.json"
    path.write_text(capsys.readouterr().out)
    assert not any("strategy" in step for step in json.loads(path.read_text())["steps"])  # one strategy throughout
    code, out = replay(capsys, path)
    assert code == 0 and "all 6 steps agree" in out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategy": {"do_sample": "yes"}}, "trace.steps[1].strategy.do_sample: expected true or false"),
        ({"strategy": {"do_sample": True}, "seed": -1}, "trace.steps[1].seed: expected a whole number"),
        ({"strategy": {"do_sample": True, "temperature": 0}}, "The trace's step 2 strategy is not valid here"),
        ({"strategy": {"num_beams": 3}}, "step 2 records beam search"),
    ],
)
def test_a_step_strategy_that_is_not_one_is_refused_before_the_model_loads(capsys, tiny_model_dir, tmp_path, change, message):
    path = saved_trace(capsys, tiny_model_dir, tmp_path, "--steps", "3")
    record = json.loads(path.read_text())
    record["steps"][1].update(change)
    record["model"] = "no/such-model"  # never loaded: the trace is refused first
    path.write_text(json.dumps(record))
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
