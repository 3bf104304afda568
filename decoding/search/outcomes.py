"""What the futures come to: each future read as an outcome (by default its first line, in a chat
the reply up to its end; or the first capture group of a regular expression), the outcomes counted,
each share with its 95 % Wilson interval, and, where a short prefix decided an outcome, the model's
probability of that prefix under the strategy beside the share, so a person sees the sampled share
close in on it as the futures grow in number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from decoding.core.errors import SettingsError
from decoding.core.state import PathToken
from decoding.core.tokens import one_line
from decoding.search.futures import Future

MAX_PATTERN = 1000  # characters of an --outcome expression
UNREAD_AT_MOST = 1e-3  # an outcome's probability is shown exact to this (a flat tail left unread)
NO_MATCH = "(no match)"
EMPTY = "(empty)"


@dataclass(frozen=True)
class Outcome:
    text: str
    count: int
    share: float
    interval: tuple[float, float]  # the share's 95 % Wilson interval
    # The strategy's probability of this outcome over the prefixes the futures took to it (exact when
    # they all took one); None where a future left it undecided within DECIDED_WITHIN tokens
    probability: float | None
    futures: tuple[int, ...]  # the indices of the futures that came to it


class OutcomeRule:
    """How a future's text is read as an outcome, and when its text so far has decided it: once the
    outcome is followed by at least one more character (a line break after the first line, a
    character after the expression's match) or the future has ended."""

    def __init__(self, pattern: str | None = None, chat: bool = False) -> None:
        self.chat = chat
        self.pattern = _compiled(pattern) if pattern is not None else None

    @property
    def name(self) -> str:
        if self.pattern is not None:
            return (
                f"the first capture group of /{self.pattern.pattern}/"
                if self.pattern.groups
                else f"the match of /{self.pattern.pattern}/"
            )
        return "the reply up to its end" if self.chat else "the first line"

    def read(self, text: str, ended: bool) -> tuple[str | None, bool]:
        """The outcome of `text` as written (None: no match), and whether more text could no
        longer change it. (It runs for many tokens a step: a view shows it through `shown`.)"""
        if self.pattern is not None:
            match = self.pattern.search(text)
            if match is None:
                return None, ended
            found = match.group(1) if self.pattern.groups else match.group(0)
            return found or "", ended or match.end() < len(text)
        if self.chat:
            return text.strip(), ended
        line, newline, _ = text.lstrip().partition("\n")
        return line.strip(), ended or bool(newline)


def shown(outcome: str | None) -> str:
    """An outcome as a table shows it: on one line, controls escaped."""
    return NO_MATCH if outcome is None else one_line(outcome) if outcome else EMPTY


def _compiled(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN:
        raise SettingsError(f"--outcome: the expression is {len(pattern):,} characters long; at most {MAX_PATTERN:,}.")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise SettingsError(f"--outcome: not a regular expression ({one_line(str(error))}).") from None


def outcomes(futures: Sequence[Future], rule: OutcomeRule) -> list[Outcome]:
    """The futures grouped by outcome, most frequent first."""
    groups: dict[str | None, list[Future]] = {}
    for future in futures:
        groups.setdefault(rule.read(future.text, future.finished is not None)[0], []).append(future)
    total = len(futures)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), shown(item[0])))
    return [
        Outcome(
            shown(text),
            len(members),
            len(members) / total,
            wilson_interval(len(members), total),
            _probability(members, text),
            tuple(future.index for future in members),
        )
        for text, members in ranked
    ]


def _probability(members: list[Future], outcome: str | None) -> float | None:
    """The strategy's probability of `outcome`: over the different prefixes the futures took before
    the token that decided it, the prefix's probability times that of every token deciding it there;
    None where a future left it undecided, or the tokens not read there could move it by more than
    UNREAD_AT_MOST."""
    prefixes: dict[tuple[int, ...], tuple[float, float]] = {}
    for future in members:
        decision = future.decision
        if decision is None or decision.outcome != outcome:
            return None
        before = math.prod(_strategy_prob(token) for token in future.tokens[: decision.tokens - 1])
        prefixes[future.ids[: decision.tokens - 1]] = (before * decision.deciding, before * decision.unread)
    if math.fsum(unread for _, unread in prefixes.values()) > UNREAD_AT_MOST:
        return None
    return math.fsum(probability for probability, _ in prefixes.values())


def _strategy_prob(token: PathToken) -> float:
    """What the strategy gave the token (the raw model's probability when nothing reshapes)."""
    return token.processed_prob if token.processed_prob is not None else token.prob


def wilson_interval(count: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of the share `count / total`."""
    if total <= 0:
        return (0.0, 1.0)
    share = count / total
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    centre = share + z * z / (2 * total)
    scale = 1 + z * z / total
    return (max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale))
