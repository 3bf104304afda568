import pytest

from decoding.core.errors import SettingsError
from decoding.core.settings import Strategy


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
        ({"seed": -1}, "seed"),
        ({"kind": "contrastive"}, "strategy"),
        ({"kind": "beam", "num_beams": 1}, "num_beams"),
        ({"num_beams": 65}, "num_beams"),
        ({"length_penalty": float("inf")}, "length_penalty"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"suppress_tokens": (-1,)}, "suppress_tokens"),
    ],
)
def test_invalid_settings_are_refused_with_the_field_named(changes, field):
    with pytest.raises(SettingsError, match=field):
        Strategy(**changes)


def test_beam_settings_reach_generate_by_their_transformers_names():
    beam = Strategy(kind="beam", num_beams=4, length_penalty=0.8, early_stopping="never", no_repeat_ngram_size=2)
    assert beam.generation_kwargs() == {
        "do_sample": False,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 2,
        "num_beams": 4,
        "length_penalty": 0.8,
        "early_stopping": "never",
    }
    assert beam.active_processors() == ["no_repeat_ngram_size"]
    assert beam.describe() == "beam B=4 lp=0.8 early=never no-repeat-2gram"


def test_a_refused_change_leaves_the_old_strategy_as_it_was():
    strategy = Strategy(kind="sample", temperature=0.7)
    with pytest.raises(SettingsError):
        strategy.with_changes(temperature=0)
    assert strategy.temperature == 0.7


def test_generation_kwargs_use_transformers_names_and_only_sampling_uses_warpers():
    assert Strategy().generation_kwargs() == {"do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    sample = Strategy(kind="sample", temperature=0.5, top_k=50, top_p=0.9)
    assert sample.generation_kwargs() == {
        "do_sample": True,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "temperature": 0.5,
        "top_k": 50,
        "top_p": 0.9,
        "min_p": 0.0,  # the warpers switched off are given as off: generate() then leaves them out, or removes nothing
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "eta_cutoff": 0.0,
    }


def test_active_processors_follow_generate_order():
    strategy = Strategy(kind="sample", temperature=2.0, top_k=5, top_p=0.5, repetition_penalty=1.2, no_repeat_ngram_size=2)
    assert strategy.active_processors() == ["repetition_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p"]
    # Greedy ignores the sampling warpers, as generate() does.
    assert Strategy(temperature=2.0, top_k=5).active_processors() == []
    assert not Strategy().reshapes


def test_describe_is_a_short_readable_label():
    assert Strategy().describe() == "greedy"
    assert Strategy(kind="sample", temperature=0.7, top_k=50, seed=3).describe() == "sample T=0.7 top-k=50 seed=3"
