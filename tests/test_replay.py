"""`tokenstep replay`: a saved trace run again says, step by step, whether the same things come out."""

import json

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
