"""tokenstep's top-n-sigma, XTC, DRY, presence/frequency penalties, mirostat 2 and dynamic temperature
held against llama.cpp's own samplers (llama-cpp-python's low-level API) on the same logits: the same
survivors, probabilities within 1e-5; the stateful ones step after step over a 50-token path."""

import ctypes

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from decoding.core.llama_samplers import (  # noqa: E402
    DontRepeatYourself,
    DynamicTemperature,
    ExcludeTopChoices,
    MirostatV2,
    PresenceFrequencyPenalty,
    TopNSigma,
    breaker_sequences,
)
from decoding.core.tokens import TokenTexts  # noqa: E402

VOCAB = 49_152  # the embedded model's
TOLERANCE = 1e-5
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
STEPS = 50


def logits_like_a_model(
    seed: int, size: int = VOCAB, spread: float = 2.0, top: tuple[float, float] = (12.0, 6.0)
) -> torch.Tensor:
    """A few likely tokens over a long tail, as a language model's logits are."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, generator=generator) * spread
    best = torch.randperm(size, generator=generator)[:8]
    logits[best] += torch.linspace(*top, 8)
    return logits


def several_likely(seed: int) -> torch.Tensor:
    """Logits where several tokens have more than 1% of the mass each (what XTC works on)."""
    return logits_like_a_model(seed, spread=1.0, top=(15.0, 12.0))


def llama_apply(sampler, logits: torch.Tensor) -> tuple[dict[int, float], int]:
    """llama.cpp's sampler on these logits: each surviving token's probability (a softmax over those
    left, with -inf as gone), and the index it selected (-1 if it selects nothing)."""
    data = np.zeros(logits.numel(), dtype=TOKEN_DATA)
    data["id"], data["logit"] = np.arange(logits.numel()), logits.numpy()
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=len(data), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    left = np.ctypeslib.as_array(ctypes.cast(array.data, ctypes.POINTER(ctypes.c_uint8)), shape=(array.size * 12,))
    rows = left.view(TOKEN_DATA)
    selected = int(rows["id"][array.selected]) if array.selected >= 0 else -1
    return _survivors(torch.from_numpy(rows["logit"].astype(np.float64)), rows["id"].tolist()), selected


def ours(processor, logits: torch.Tensor, context: list[int] = (0,)) -> dict[int, float]:
    ids = torch.tensor([list(context)], dtype=torch.long)
    out = processor(ids, logits[None].clone())[0]
    return _survivors(out.double(), list(range(logits.numel())))


def _survivors(logits: torch.Tensor, ids: list[int]) -> dict[int, float]:
    alive = torch.isfinite(logits)
    probs = torch.softmax(logits[alive], dim=-1).tolist()
    return dict(zip([token for token, ok in zip(ids, alive.tolist()) if ok], probs))


def assert_agree(theirs: dict[int, float], mine: dict[int, float]) -> None:
    assert set(mine) == set(theirs), f"survivors differ: {len(mine)} here, {len(theirs)} in llama.cpp"
    worst = max(abs(mine[token] - theirs[token]) for token in theirs)
    assert worst < TOLERANCE, f"probabilities differ by up to {worst:.2e}"


def llama_sampler(init, *args):
    sampler = init(*args)
    assert sampler
    return sampler


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_n_sigma_keeps_what_llama_cpp_keeps(n, seed):
    logits = logits_like_a_model(seed)
    theirs, _ = llama_apply(llama_sampler(llama_cpp.llama_sampler_init_top_n_sigma, n), logits)
    mine = ours(TopNSigma(n), logits)
    assert_agree(theirs, mine)
    assert 1 <= len(mine) < VOCAB


@pytest.mark.parametrize("threshold", [0.01, 0.05, 0.1, 0.2])
@pytest.mark.parametrize("seed", [0, 3])
def test_xtc_at_probability_one_removes_what_llama_cpp_removes(threshold, seed):
    logits = several_likely(seed)
    theirs, _ = llama_apply(llama_sampler(llama_cpp.llama_sampler_init_xtc, 1.0, threshold, 1, 0), logits)
    mine = ours(ExcludeTopChoices(1.0, threshold, seed=0), logits)
    assert_agree(theirs, mine)
    above = int((torch.softmax(logits, dim=-1) >= threshold).sum())
    assert len(mine) == VOCAB - max(0, above - 1)


def test_xtc_at_probability_zero_changes_nothing_in_either():
    logits = several_likely(5)
    theirs, _ = llama_apply(llama_sampler(llama_cpp.llama_sampler_init_xtc, 0.0, 0.05, 1, 0), logits)
    assert_agree(theirs, ours(ExcludeTopChoices(0.0, 0.05, seed=0), logits))
    assert len(theirs) == VOCAB


def test_xtc_removed_the_top_tokens_but_the_last_above_the_threshold():
    probs = torch.softmax(several_likely(0), dim=-1)
    above = int((probs >= 0.05).sum())
    mine = ours(ExcludeTopChoices(1.0, 0.05, seed=0), torch.log(probs))
    assert above >= 2 and len(mine) == VOCAB - (above - 1)


def test_xtc_coin_follows_the_seed_and_the_place_not_the_call():
    xtc = ExcludeTopChoices(0.5, 0.1, seed=7)
    places = [torch.tensor([[1, 2, step]]) for step in range(400)]
    fired = [xtc.fires(ids) for ids in places]
    assert fired == [xtc.fires(ids) for ids in places]  # computed again, the same
    assert 150 < sum(fired) < 250  # about half the time
    assert fired != [ExcludeTopChoices(0.5, 0.1, seed=8).fires(ids) for ids in places]


@pytest.mark.parametrize(
    ("temperature", "spread", "exponent"), [(1.0, 0.5, 1.0), (0.8, 0.6, 2.0), (1.2, 0.3, 0.5), (0.4, 0.5, 1.0)]
)
@pytest.mark.parametrize("seed", [0, 4])
def test_dynamic_temperature_reshapes_as_llama_cpp_does(temperature, spread, exponent, seed):
    logits = logits_like_a_model(seed)
    sampler = llama_sampler(llama_cpp.llama_sampler_init_temp_ext, temperature, spread, exponent)
    theirs, _ = llama_apply(sampler, logits)
    assert_agree(theirs, ours(DynamicTemperature(temperature, spread, exponent), logits))


def a_path(seed: int, length: int, tokens: int = 12) -> list[int]:
    """Token ids drawn from a few, so that tokens and runs of tokens repeat."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(0, VOCAB, (tokens,), generator=generator)
    return words[torch.randint(0, tokens, (length,), generator=generator)].tolist()


@pytest.mark.parametrize(("last_n", "frequency", "presence"), [(64, 0.5, 0.0), (16, 0.0, 1.5), (8, 0.3, 0.7), (-1, -0.4, 0.2)])
def test_presence_and_frequency_penalties_agree_with_llama_cpp_over_a_path(last_n, frequency, presence):
    path = a_path(1, STEPS + 10)
    sampler = llama_sampler(
        llama_cpp.llama_sampler_init_penalties, VOCAB, last_n if last_n > 0 else 4096, 1.0, frequency, presence
    )
    penalties = PresenceFrequencyPenalty(last_n, frequency, presence)
    for step, token in enumerate(path):
        llama_cpp.llama_sampler_accept(sampler, token)
        logits = logits_like_a_model(step)
        theirs, _ = llama_apply(sampler, logits)
        assert_agree(theirs, ours(penalties, logits, path[: step + 1]))


@pytest.fixture(scope="module")
def llama_vocab():
    """The embedded model's vocabulary as llama.cpp reads it (no weights loaded), and as tokenstep reads it."""
    from decoding.engines.embedded import embedded_gguf
    from decoding.engines.llama.engine import LlamaCppEngine

    engine = LlamaCppEngine(embedded_gguf(), model_id="embedded", gpu=False)
    yield llama_cpp.llama_model_get_vocab(engine._llm.model), TokenTexts.of(engine), engine


def llama_dry(vocab, multiplier, base, allowed, last_n, breakers):
    words = [text.encode() for text in breakers]
    array = (ctypes.c_char_p * max(1, len(words)))(*words)
    return llama_sampler(llama_cpp.llama_sampler_init_dry, vocab, multiplier, base, allowed, last_n, array, len(words))


def test_dry_sequence_breakers_are_the_tokens_llama_cpp_finds(llama_vocab):
    _, texts, engine = llama_vocab
    found = breaker_sequences(("\n", ":", '"', "*"), engine.token_bytes, engine.vocab_size, engine.encode_piece)
    newline = engine.encode_piece("\n")
    assert () in found[newline[0]] and len(found) > 100  # every token holding a newline, a colon, ...
    assert texts.breakers(("\n",), breaker_sequences) is texts.breakers(("\n",), breaker_sequences)  # found once


TEXT = (
    "The cat sat on the mat. The dog sat on the log. The cat sat on the mat again, and the cat sat on the "
    'mat: "the cat sat on the mat" * the cat sat on the\n the cat sat on the mat'
)


@pytest.mark.parametrize(
    ("multiplier", "base", "allowed", "last_n", "breakers"),
    [
        (0.8, 1.75, 2, -1, ("\n", ":", '"', "*")),
        (1.0, 2.0, 1, 40, ("\n",)),
        (0.5, 1.1, 3, -1, ()),
        (0.8, 1.75, 2, 24, (" on the", "mat.")),  # breakers of several tokens
    ],
)
def test_dry_agrees_with_llama_cpp_over_a_path(llama_vocab, multiplier, base, allowed, last_n, breakers):
    vocab, texts, engine = llama_vocab
    path = engine.encode_piece(TEXT)
    assert len(path) >= STEPS
    # llama.cpp's -1 ("the whole context") is the context's size, which its caller passes in
    sampler = llama_dry(vocab, multiplier, base, allowed, last_n if last_n > 0 else 4096, breakers)
    found = texts.breakers(breakers, breaker_sequences)
    dry = DontRepeatYourself(multiplier, base, allowed, last_n, found)
    penalized = 0
    for step, token in enumerate(path):
        llama_cpp.llama_sampler_accept(sampler, token)
        logits = logits_like_a_model(step) * 0.3
        theirs, _ = llama_apply(sampler, logits)
        assert_agree(theirs, ours(dry, logits, path[: step + 1]))
        penalized += bool(dry.penalties(path[: step + 1] if last_n < 0 else path[max(0, step + 1 - last_n) : step + 1]))
    assert penalized >= 5  # the path repeats: DRY had work to do


@pytest.mark.parametrize(("tau", "eta"), [(5.0, 0.1), (3.0, 0.3), (8.0, 0.05)])
def test_mirostat_2_keeps_what_llama_cpp_keeps_after_the_same_tokens(tau, eta):
    sampler = llama_sampler(llama_cpp.llama_sampler_init_mirostat_v2, 1234, tau, eta)
    mirostat = MirostatV2(tau, eta)
    context, sizes = [1, 2, 3], []
    for step in range(STEPS):
        logits = logits_like_a_model(100 + step) * 0.5
        theirs, chosen = llama_apply(sampler, logits)
        assert_agree(theirs, ours(mirostat, logits, context))
        sizes.append(len(theirs))
        context.append(chosen)  # llama.cpp's draw; mu follows it in both
    assert len(set(sizes)) > 3  # mu moved the cutoff
    assert mirostat.mu_at(torch.tensor([context[:-1]])) != 2 * tau
