"""`tokenstep trace` as a person runs it: formats, picks, and one clear line for bad input."""

import csv
import io
import json
import subprocess
import sys

import pytest

from tui.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["trace", ""], "prompt is empty"),
        (["trace", "hi", "--steps", "0"], "--steps must be at least 1"),
        (["trace", "hi", "--strategy", "sample", "--temperature", "0"], "--temperature must be a number from 0.01 to 100"),
        (["trace", "hi", "--top-p", "1.5"], "--top-p must be greater than 0"),
        (["trace", "hi", "--picks", "0,7"], "--picks rank 7 is outside the 5 choices"),
        (["trace", "hi", "--picks", "a,b"], "--picks takes ranks"),
        (["trace", "hi", "--model", "./no/such/folder"], "no such folder"),
        (["--choices", "0"], "--choices must be at least 1"),
        (["trace", "hi", "--strategy", "beam", "--num-beams", "1"], "--num-beams must be a whole number from 2"),
        (["trace", "hi", "--strategy", "beam", "--picks", "1"], "beam search keeps several"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_nonzero_exit(args, message):
    result = subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def trace(capsys, tiny_model_dir, *args):
    assert main(["trace", "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", *args]) == 0
    return capsys.readouterr().out


def test_json_trace_is_a_full_record(capsys, tiny_model_dir):
    record = json.loads(trace(capsys, tiny_model_dir, "--format", "json", "--steps", "3", "--choices", "4"))
    assert record["engine"] == "transformers" and record["prompt"] == "The quick brown"
    assert record["strategy"]["do_sample"] is False and record["seed"] == 0
    assert len(record["steps"]) == 3 and len(record["steps"][0]["candidates"]) == 4
    chosen = [step["chosen"]["token_id"] for step in record["steps"]]
    assert chosen == record["generated_ids"]
    assert record["sequence_logprob"] == pytest.approx(sum(step["chosen"]["logprob"] for step in record["steps"]))
    assert all(step["chosen"]["rank"] == 0 and not step["chosen"]["forced"] for step in record["steps"])


def test_the_json_a_trace_writes_as_it_goes_is_the_json_of_its_whole_record(capsys, tiny_model_dir, tmp_path):
    """`trace` writes its steps as it makes them (a long path's record is never whole in memory):
    the text is the same as the export's JSON of the same path, a line a step."""
    from decoding.core.settings import Strategy
    from decoding.engines.registry import LoadOptions, load_engine
    from decoding.explorer.explorer import Explorer
    from decoding.explorer.trace_run import TracePlan, run_trace
    from decoding.records.trace import terminal_safe_json

    out = trace(capsys, tiny_model_dir, "--format", "json", "--steps", "3", "--repetition-penalty", "1.3")
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    whole = run_trace(Explorer(engine, Strategy(repetition_penalty=1.3), 5), TracePlan("The quick brown", 3))
    assert out == terminal_safe_json(whole) + "\n"
    lines = out.splitlines()
    assert all(line.startswith('    {"input_text"') for line in lines[lines.index('  "steps": [') + 1 :][:3])


def test_picks_force_ranks_then_the_strategy_goes_on(capsys, tiny_model_dir):
    record = json.loads(trace(capsys, tiny_model_dir, "--format", "json", "--steps", "4", "--picks", "2,1"))
    chosen = [step["chosen"] for step in record["steps"]]
    assert [(c["rank"], c["forced"]) for c in chosen] == [(2, True), (1, True), (0, False), (0, False)]
    assert chosen[0]["token_id"] == record["steps"][0]["candidates"][2]["token_id"]


def test_sampling_trace_carries_processed_probabilities(capsys, tiny_model_dir):
    out = trace(capsys, tiny_model_dir, "--format", "json", "--strategy", "sample", "--top-k", "2", "--seed", "3")
    step = json.loads(out)["steps"][0]
    assert [c["removed"] for c in step["candidates"]] == [False, False, True, True, True]
    assert "processed_prob" in step["chosen"]


def test_csv_markdown_and_table_carry_one_row_per_step(capsys, tiny_model_dir):
    rows = list(csv.reader(io.StringIO(trace(capsys, tiny_model_dir, "--format", "csv", "--steps", "3"))))
    assert rows[0] == ["Input", "Chosen", "Prob", "Forced"] + [f"Choice {i}" for i in range(5)]
    assert len(rows) == 4 and rows[1][0] == "The quick brown" and rows[1][4].endswith("%)")
    # the chosen token, its probability as a number and whether it was forced, then the candidates with it starred
    chosen, prob, forced = rows[1][1:4]
    assert 0 < float(prob) <= 1 and forced == "false"
    assert rows[1][4] == f"*{chosen} ({100 * float(prob):.2f}%)"
    picked = list(csv.reader(io.StringIO(trace(capsys, tiny_model_dir, "--format", "csv", "--steps", "1", "--picks", "2"))))
    assert picked[1][3] == "true" and picked[1][6].startswith(f"*{picked[1][1]} (")
    markdown = trace(capsys, tiny_model_dir, "--format", "markdown", "--steps", "3").splitlines()
    assert markdown[1] == "|---|---|---|---|---|---|---|---|---|" and len(markdown) == 5
    table = trace(capsys, tiny_model_dir, "--steps", "3").splitlines()
    assert table[0].startswith("Input") and set(table[1]) <= {"-", " "} and len(table) == 5


def test_beam_trace_lists_the_live_beams_per_step_then_the_finished_ones(capsys, tiny_model_dir):
    beam = ("--strategy", "beam", "--num-beams", "3", "--steps", "4")
    record = json.loads(trace(capsys, tiny_model_dir, *beam, "--format", "json"))
    assert record["strategy"]["num_beams"] == 3 and record["max_new_tokens"] == 4
    assert 1 <= len(record["steps"]) <= 4 and len(record["steps"][0]["beams"]) == 3
    first = record["steps"][0]["beams"]
    assert [b["score"] for b in first] == sorted((b["score"] for b in first), reverse=True)
    best = record["steps"][-1]["finished"][0]
    assert record["generated_ids"] == best["token_ids"] and record["sequence_score"] == best["penalised_score"]
    assert record["sequence_logprob"] == pytest.approx(best["logprob"])

    table = trace(capsys, tiny_model_dir, *beam).splitlines()
    assert table[0].split() == ["Step", "Beam", "Continuation", "logprob", "score", "penalised"]
    assert sum(line.startswith("1 ") for line in table) == 3 and any(line.startswith("finished  best") for line in table)
    rows = list(csv.reader(io.StringIO(trace(capsys, tiny_model_dir, *beam, "--format", "csv"))))
    assert rows[0][:3] == ["Step", "Beam", "Continuation"] and rows[-3][0] == "finished"
    markdown = trace(capsys, tiny_model_dir, *beam, "--format", "markdown").splitlines()
    assert markdown[0].startswith("| Step | Beam |") and len(markdown) == len(rows) + 1


def test_while_the_app_runs_native_writes_to_stderr_never_reach_the_screen():
    """Textual draws on stderr; xgrammar's C++ warnings are written to descriptor 2 directly."""
    import os
    import pty
    import select
    import sys

    from tui.cli import screen_apart_from_native_stderr

    master, terminal = pty.openpty()
    saved = os.dup(2)
    os.dup2(terminal, 2)
    try:
        with screen_apart_from_native_stderr():
            os.write(2, b"native warning\n")  # as C++ code writes
            sys.__stderr__.write("the screen\n")  # as Textual's driver draws
            sys.__stderr__.flush()
        os.write(2, b"after\n")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    written = ""
    while "after" not in written and select.select([master], [], [], 2)[0]:  # a pty hands over what has come so far
        written += os.read(master, 1024).decode()
    os.close(master)
    os.close(terminal)
    assert "the screen" in written and "after" in written and "native warning" not in written


# --- a subcommand after options ------------------------------------------------------------------


@pytest.mark.embedded
def test_a_subcommand_after_options_is_the_subcommand():
    """`tokenstep --model X trace x` read "trace" as the app's prompt."""
    command = [sys.executable, "-m", "tui.cli", "--dtype", "float32", "trace", "Hi", "--steps", "1", "--format", "json"]
    result = subprocess.run([*command, "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt"] == "Hi" and record["dtype"] == "float32" and len(record["steps"]) == 1


def test_options_before_a_subcommand_are_its_own(capsys, tiny_model_dir):
    options = ["--model", str(tiny_model_dir), "--device", "cpu", "--choices", "3"]
    assert main([*options, "trace", "The quick", "--steps", "2", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "The quick" and record["choices"] == 3
    assert main(["--device", "cpu", "replay", "no-such-trace.json"]) == 2  # replay's own refusal, not the app's
    assert "no-such-trace.json: cannot read a tokenstep JSON trace" in capsys.readouterr().err


def test_a_prompt_that_reads_like_a_subcommand_goes_after_two_dashes():
    from tui.cli import command_and_arguments, run_trace_command

    assert command_and_arguments(["--", "trace"]) == (None, ["--", "trace"])  # the app, on the prompt "trace"
    assert command_and_arguments(["--chat", "--", "diff"]) == (None, ["--chat", "--", "diff"])
    assert command_and_arguments(["--system", "trace", "--chat", "Hi"]) == (None, ["--system", "trace", "--chat", "Hi"])
    assert command_and_arguments(["--chat", "trace", "Hi"]) == (run_trace_command, ["--chat", "Hi"])
