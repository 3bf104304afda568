"""llama.cpp's samplers that no maintained Python project implements, as transformers `LogitsProcessor`s.

Each follows its llama.cpp sampler (`src/llama-sampling.cpp`) step for step, and tests hold it against
that sampler through llama-cpp-python on the same logits. Where llama.cpp shrinks its candidate array,
these set the scores of the tokens it drops to -inf, so every stage keeps the whole vocabulary and
the chain view can say what each removed. Where llama.cpp keeps state (the tokens it was shown, a
random generator, mirostat's mu), these read it from the context they are given, so a step computed
again, after an undo or in a replay, comes out the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor

from decoding.core.finite import finite_count, finite_ids, finite_mask

NEG_INF = float("-inf")


def _finite(scores: torch.Tensor) -> torch.Tensor:
    return finite_mask(scores) if scores.dim() == 1 else torch.isfinite(scores)


class TopNSigma(LogitsProcessor):
    """llama_sampler_init_top_n_sigma: keep the tokens whose logit is within n standard deviations of
    the best one (the deviation of the logits still in play)."""

    def __init__(self, n: float) -> None:
        self.n = n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        live = _finite(scores)
        if self.n <= 0 or int(live.sum()) <= 1:
            return scores
        values = scores[live].double()  # llama.cpp sums in float, squares in double: the double is closer to both
        mean = values.mean()
        std = torch.sqrt(((values - mean) ** 2).mean())
        cutoff = float(values.max() - self.n * std)
        return scores.masked_fill(scores < cutoff, NEG_INF)  # type: ignore[return-value]


def coin(seed: int, input_ids: torch.Tensor, salt: bytes) -> float:
    """A number in [0, 1) drawn from the seed and the context: the same at the same place of the
    same path, whenever it is computed (llama.cpp draws from a generator that moves at each call)."""
    digest = hashlib.blake2b(input_ids.detach().cpu().numpy().tobytes(), digest_size=8, key=seed.to_bytes(8, "little") + salt)
    return int.from_bytes(digest.digest(), "little") / 2**64


class ExcludeTopChoices(LogitsProcessor):
    """llama_sampler_init_xtc: with the given probability, remove every token at or above the
    threshold but the least likely of them. Its coin is tokenstep's (see `coin`)."""

    def __init__(self, probability: float, threshold: float, seed: int) -> None:
        self.probability, self.threshold, self.seed = probability, threshold, seed

    def fires(self, input_ids: torch.Tensor) -> bool:
        return self.probability > 0 and coin(self.seed, input_ids, b"xtc") <= self.probability

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.threshold > 0.5 or finite_count(scores) < 2 or not self.fires(input_ids):
            return scores
        probs = torch.softmax(scores, dim=-1)
        above = probs >= self.threshold
        if int(above.sum()) < 2:
            return scores
        least = torch.where(above, probs, torch.inf).argmin(dim=-1, keepdim=True)
        removed = above.scatter(-1, least, False)
        return scores.masked_fill(removed, NEG_INF)  # type: ignore[return-value]


def _window(ids: torch.Tensor, last_n: int) -> torch.Tensor:
    """The last `last_n` tokens of one row of context (-1: all of it)."""
    return ids if last_n < 0 else ids[max(0, ids.shape[0] - last_n) :]


class PresenceFrequencyPenalty(LogitsProcessor):
    """llama_sampler_init_penalties with its repeat penalty at 1 (tokenstep's repetition penalty is
    transformers'): each token seen in the last n lowers its logit by count x frequency + presence."""

    def __init__(self, last_n: int, frequency: float, presence: float) -> None:
        self.last_n, self.frequency, self.presence = last_n, frequency, presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.last_n == 0 or input_ids.shape[-1] == 0:
            return scores
        out = scores.clone()
        for row, context in enumerate(input_ids):  # a row per beam
            seen, counts = torch.unique(_window(context, self.last_n), return_counts=True)
            seen, counts = seen[seen < scores.shape[-1]], counts[seen < scores.shape[-1]]
            out[row, seen] -= counts.to(scores.dtype) * self.frequency + self.presence
        return out  # type: ignore[return-value]


class DynamicTemperature(LogitsProcessor):
    """llama_sampler_init_temp_ext: a temperature between temp - range and temp + range, set by how
    flat the distribution is (its entropy over the most it could be, to the power `exponent`)."""

    def __init__(self, temperature: float, spread: float, exponent: float) -> None:
        self.centre, self.spread, self.exponent = temperature, spread, exponent

    def temperature_for(self, scores: torch.Tensor) -> float | None:
        """The temperature these scores get (None: one candidate or none, left as they are)."""
        size = finite_count(scores)
        if size <= 1:
            return None
        logprobs = torch.log_softmax(scores, dim=-1)  # in float, as llama.cpp; a token out adds 0 x (a finite floor)
        entropy = float(-(logprobs.exp() * logprobs.clamp(min=torch.finfo(logprobs.dtype).min)).sum())
        low, high = max(0.0, self.centre - self.spread), self.centre + self.spread
        return low + (high - low) * (entropy / math.log(size)) ** self.exponent

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperature = self.temperature_for(scores)
        if temperature is None:
            return scores
        if temperature <= 0:  # llama.cpp's temperature 0: the best token only
            best = scores.argmax(dim=-1, keepdim=True)
            return torch.full_like(scores, NEG_INF).scatter(-1, best, scores.gather(-1, best))  # type: ignore[return-value]
        return scores / temperature  # type: ignore[return-value]


class MirostatV2(LogitsProcessor):
    """llama_sampler_init_mirostat_v2: keep the tokens whose surprise (-log2 p) is at most mu; after
    each chosen token mu moves by eta x (tau - its surprise among those kept). mu starts at 2 tau.

    mu is a function of the path: each call keeps what it kept under a digest of its context, and a
    call one token further reads the token chosen there. A context whose parent was never seen starts
    mu afresh (a session read back from a file). A token forced from outside the kept ones counts with
    the surprise mu (the cutoff it crossed)."""

    def __init__(self, tau: float, eta: float) -> None:
        self.tau, self.eta = tau, eta
        self._kept: dict[bytes, tuple[float, torch.Tensor, torch.Tensor]] = {}  # context -> mu, kept ids, their probs

    @staticmethod
    def _key(ids: torch.Tensor) -> bytes:
        return hashlib.blake2b(ids.detach().cpu().numpy().tobytes(), digest_size=16).digest()

    def mu_at(self, input_ids: torch.Tensor) -> float:
        ids = input_ids[0]
        parent = self._kept.get(self._key(ids[:-1])) if ids.numel() else None
        if parent is None:
            return 2 * self.tau
        mu, kept_ids, kept_probs = parent
        found = (kept_ids == ids[-1]).nonzero()
        surprise = -math.log2(float(kept_probs[found[0, 0]])) if found.numel() else mu
        return mu - self.eta * (surprise - self.tau)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        live = finite_ids(scores[0])
        kept = self.on_tokens(input_ids, scores[0, live], live)
        return torch.full_like(scores, NEG_INF).index_put_((torch.zeros_like(live), live), kept)  # type: ignore[return-value]

    def on_tokens(self, input_ids: torch.Tensor, scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The stage on the scores of the tokens still in play (`token_ids`, the others being out)."""
        mu = self.mu_at(input_ids)
        keep = self.keep(scores, mu)
        kept_probs = torch.softmax(scores[keep], dim=-1)  # as llama.cpp, from the logits of those kept
        self._kept[self._key(input_ids[0])] = (mu, token_ids[keep], kept_probs)
        return scores.masked_fill(~keep, NEG_INF)

    def keep(self, scores: torch.Tensor, mu: float) -> torch.Tensor:
        """Which tokens have a surprise of at most mu (the likeliest if none)."""
        probs = torch.softmax(scores, dim=-1)
        keep = -torch.log2(probs) <= mu
        if not bool(keep.any()):
            keep[probs.argmax()] = True
        return keep


# --- DRY: "don't repeat yourself", ported (as llama.cpp ported it) from koboldcpp ----------------------

MAX_BREAKER_CHARS = 40  # llama.cpp truncates a sequence breaker to this many characters
MAX_BREAKER_TAIL = 20  # and its tokens after the first to this many
Breakers = dict[int, list[tuple[int, ...]]]  # a head token -> the tails that complete a breaker with it


def breaker_sequences(
    breakers: Sequence[str], token_bytes: Callable[[int], bytes], vocab_size: int, encode: Callable[[str], list[int]]
) -> Breakers:
    """llama.cpp's get_overlapping_token_sequences for each breaker: every token whose text holds it
    (no tail), and every token whose text ends with a start of it (the rest of it, tokenized)."""
    found: Breakers = {}
    words = [token_bytes(token_id) for token_id in range(vocab_size)]
    for breaker in breakers:
        text = breaker.encode()[:MAX_BREAKER_CHARS]  # llama.cpp cuts bytes
        for token_id, word in enumerate(words):
            if text in word:
                _add(found, token_id, ())
                continue
            at = word.find(text[:1])
            while at != -1:
                overlap = len(word) - at
                if overlap < len(text) and word[at:] == text[:overlap]:
                    rest = text[overlap:].decode(errors="ignore")
                    _add(found, token_id, tuple(encode(rest)[:MAX_BREAKER_TAIL]))
                at = word.find(text[:1], at + 1)
    return found


def _add(found: Breakers, token_id: int, tail: tuple[int, ...]) -> None:
    tails = found.setdefault(token_id, [])
    if tail not in tails:
        tails.append(tail)


class DontRepeatYourself(LogitsProcessor):
    """llama_sampler_init_dry: a token that would extend a repeat of `allowed_length` tokens or more
    (among the last n) loses multiplier x base ** (repeat length - allowed length) from its logit;
    a sequence breaker ends what counts as a repeat."""

    FLOAT_MAX_LOG = 88.7228391

    def __init__(self, multiplier: float, base: float, allowed_length: int, last_n: int, breakers: Breakers) -> None:
        self.multiplier, self.base, self.allowed_length, self.last_n = multiplier, base, allowed_length, last_n
        self.breakers = breakers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.multiplier == 0 or self.base < 1 or self.last_n == 0:
            return scores
        out: torch.Tensor = scores
        for row, context in enumerate(input_ids):  # a row per beam
            penalties = self.penalties(_window(context, self.last_n).tolist())
            if penalties:
                ids = torch.tensor(list(penalties), dtype=torch.long, device=scores.device)
                amounts = torch.tensor(list(penalties.values()), dtype=scores.dtype, device=scores.device)
                out = out.clone() if out is scores else out
                out[row, ids] -= amounts
        return out  # type: ignore[return-value]

    def penalties(self, tokens: list[int]) -> dict[int, float]:
        """What each token would lose after `tokens`, by token id (llama.cpp's steps 1 to 4)."""
        n = len(tokens)
        if n <= self.allowed_length:
            return {}
        back = tokens[::-1]  # back[i]: i tokens from the end (llama.cpp's `rat(i)`)
        limit = self._repeat_limit(back)
        if limit < self.allowed_length:
            return {}
        counts = _repeat_counts(back, limit)
        longest: dict[int, int] = {}
        for i in range(n - 1):
            if counts[i] >= self.allowed_length:
                token = back[n - 2 - i]
                longest[token] = max(longest.get(token, 0), counts[i])
        max_exponent = int(self.FLOAT_MAX_LOG / math.log(self.base)) if self.base > 1.000001 else 0
        penalties = {}
        for token, length in longest.items():
            if () in self.breakers.get(token, ()):
                continue  # a breaker of one token is never penalized
            exponent = length - self.allowed_length
            if max_exponent > 0:
                exponent = min(exponent, max_exponent)
            penalties[token] = self.multiplier * self.base**exponent
        return penalties

    def _repeat_limit(self, back: list[int]) -> int:
        """How far back a repeat may reach: up to the nearest sequence breaker."""
        for i, token in enumerate(back):
            tails = self.breakers.get(token)
            if not tails:
                continue
            matched = [
                len(tail) for tail in tails if len(tail) <= i and all(tail[k] == back[i - k - 1] for k in range(len(tail)))
            ]
            if matched:
                return i - max(matched)
        return len(back)


def _repeat_counts(back: list[int], limit: int) -> list[int]:
    """For each position, how many of the context's last tokens also end there (capped at `limit`):
    the Z-algorithm, backwards, as llama.cpp runs it. counts[last - k] is for k tokens back."""
    n = len(back)
    last, counts = n - 1, [0] * n
    left = right = 0
    for k in range(1, n):
        if k > right:
            length = 0
            while length + k < n and back[length] == back[length + k]:
                length += 1
            counts[last - k] = min(length, limit)
            if length > 0:
                left, right = k, k + length - 1
        else:
            pair = k - left
            right_part = right - k + 1
            if counts[last - pair] < right_part:
                counts[last - k] = min(counts[last - pair], limit)
            else:
                i = right + 1
                while i < n and back[i] == back[i - k]:
                    i += 1
                counts[last - k] = min(i - k, limit)
                left, right = k, i - 1
    return counts
