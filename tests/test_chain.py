"""The sampler chain as a user meets it: llama.cpp's samplers as options with their checks, `--samplers`
ordering the chain, traces and replay carrying every sampler and the order, compare taking them, the
chain view and the candidate panel's strip saying what each stage kept, the settings screen moving a stage."""

import json

import pytest
from rich.color import Color

from decoding.core.errors import SettingsError
from decoding.core.samplers import LLAMA_CPP_ORDER
from decoding.core.settings import Strategy, parse_strategies
from decoding.search.session import Session
from tests.test_app import SIZE, make_app, settle
from tests.test_app_drawn import rows_of
from tui.cli import main
from tui.settings_screen import default_chain_names
from tui.widgets.candidates import CandidatePanel
from tui.widgets.processors import ProcessorPanel

EVERY_SAMPLER = [
    "--strategy", "sample", "--seed", "3", "--temperature", "0.9", "--dynatemp-range", "0.3", "--top-k", "400",
    "--top-p", "0.99", "--min-p", "0.001", "--top-n-sigma", "3", "--xtc-probability", "0.5", "--xtc-threshold", "0.01",
    "--presence-penalty", "0.3", "--frequency-penalty", "0.2", "--repeat-last-n", "16", "--dry-multiplier", "0.8",
    "--dry-allowed-length", "1", "--mirostat", "2", "--mirostat-tau", "8", "--repetition-penalty", "1.1",
]  # fmt: skip


def trace_args(model_dir, *args):
    return [
        "trace",
        "The quick brown fox jumps over the lazy dog. The quick brown",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        *args,
    ]


def test_a_trace_with_every_sampler_in_llama_cpps_order_replays_step_for_step(capsys, tiny_model_dir, tmp_path):
    args = trace_args(tiny_model_dir, *EVERY_SAMPLER, "--samplers", "llama.cpp", "--steps", "12", "--format", "json")
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    settings = record["strategy"]
    assert settings["samplers"] == list(LLAMA_CPP_ORDER)
    assert settings["dry_multiplier"] == 0.8 and settings["mirostat"] == 2 and settings["xtc_threshold"] == 0.01
    stages = [effect["name"] for effect in record["steps"][0]["processors"]]
    assert stages == [
        "repetition_penalty", "presence_penalty", "dry_multiplier", "top_n_sigma", "top_k", "top_p", "min_p",
        "xtc_probability", "temperature", "mirostat",
    ]  # fmt: skip
    kept = [effect["kept"] for effect in record["steps"][0]["processors"]]
    assert kept == sorted(kept, reverse=True) and kept[-1] >= 1  # a chain only narrows
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(record))
    assert main(["replay", str(path), "--device", "cpu"]) == 0
    assert "all 12 steps agree" in capsys.readouterr().out


def test_the_default_order_is_generate_s_and_a_chain_given_reorders_it(tiny_engine):
    default = Strategy(kind="sample", temperature=0.7, min_p=0.05, dry_multiplier=0.8, presence_penalty=0.5)
    assert default.active_processors() == ["presence_penalty", "dry_multiplier", "temperature", "min_p"]
    given = default.with_changes(samplers=("dry", "min_p", "temperature", "penalties"))
    assert given.active_processors() == ["dry_multiplier", "min_p", "temperature", "presence_penalty"]
    assert "chain dry>min_p>temperature>penalties" in given.describe()
    assert Strategy(**given.as_dict()) == given  # as a session file writes and reads it
    session = Session(tiny_engine, given)
    session.reset("The quick brown")
    session.step()
    report = session.processor_report()
    assert [effect.name for effect in report.effects] == given.active_processors()


def test_compare_takes_todays_samplers_and_an_order():
    strategy = parse_strategies("sample:dry_multiplier=0.8:samplers=dry;min_p;temperature:min_p=0.05:temperature=0.8")[0]
    assert strategy.dry_multiplier == 0.8 and strategy.samplers == ("dry", "min_p", "temperature")
    with pytest.raises(SettingsError, match="xtc is on but not listed"):
        parse_strategies("sample:xtc_probability=0.5:samplers=min_p")


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--mirostat", "1"], "--mirostat must be 0 (off) or 2"),
        (["--xtc-threshold", "0.7"], "--xtc-threshold must be from 0 to 0.5"),
        (["--dry-base", "0.5"], "--dry-base must be a number from 1 to 100"),
        (["--presence-penalty", "nan"], "--presence-penalty must be a number from -2 to 2"),
        (["--samplers", "dry;banana"], "'banana' is none"),
        (["--samplers", "min_p;min-p"], "--samplers must name each stage once"),
        (["--dry-sequence-breakers", '["\\n", ""]'], "--dry-sequence-breakers must be a JSON array"),
    ],
)
def test_a_bad_sampler_setting_is_one_line_and_exit_2(capsys, tiny_model_dir, option, said):
    assert main(trace_args(tiny_model_dir, "--strategy", "sample", *option)) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_breakers_that_are_not_json_are_one_line(capsys, tiny_model_dir):
    assert main(trace_args(tiny_model_dir, "--dry-sequence-breakers", "[oops")) == 2
    err = capsys.readouterr().err.strip()
    assert "--dry-sequence-breakers" in err and "JSON array" in err and len(err.splitlines()) == 1


async def test_the_chain_view_and_the_strip_say_what_each_stage_kept(tiny_model_dir):
    strategy = Strategy(kind="sample", top_k=7, min_p=0.001, samplers=("top_k", "min_p"))
    app = make_app(tiny_model_dir, strategy=strategy)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        vocab = app.snapshot.distribution.vocab_size
        strip = next(row for row in rows_of(app, app.query_one(CandidatePanel)) if row.text.strip().startswith("kept"))
        assert f"kept 7 of {vocab:,}" in strip.text and "of the mass)" in strip.text
        magenta = Color.from_triplet(app.ansi_theme.ansi_colors[5])
        assert strip.colours(strip.find("7 of"), "7") == {magenta}  # the number kept stands out
        await pilot.press("w")
        await settle(pilot)
        header, kept, mass, *_ = rows_of(app, app.query_one(ProcessorPanel))
        assert header.text.split()[:4] == ["token", "model", "top-k", "min-p"]
        assert kept.text.split() == ["kept", f"{vocab:,}", "7", "7"]
        assert mass.text.split()[:4] == ["of", "the", "mass", "1.000"]


async def test_the_settings_screen_moves_a_stage_of_the_chain(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=Strategy(kind="sample", top_k=20, min_p=0.01))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        field = app.screen.query_one("#samplers")
        field.focus()
        await pilot.pause()
        await pilot.press("alt+down")  # generate()'s order filled in, its first stage moved one later
        first, second, *rest = default_chain_names()
        assert field.value == ";".join([second, first, *rest])
        field.value = "min_p;top_k"
        field.cursor_position = 0
        await pilot.press("alt+down")
        assert field.value == "top_k;min_p"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.samplers == ("top_k", "min_p")
        assert app.snapshot.strategy.active_processors() == ["top_k", "min_p"]
