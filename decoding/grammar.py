"""Grammar constraints (JSON schemas, any JSON, regular expressions, EBNF/GBNF grammars) with xgrammar,
the library vLLM and SGLang constrain with: compiled once per model and constraint, then a matcher per
generation that masks what the grammar forbids.

The matcher's state is a function of the tokens generated since the prompt, and it follows them:
before each use it is rolled back to the tokens it shares with the path and fed the rest (xgrammar's
rollback is exact), so undo, jumps in the tree and reopened sessions need no bookkeeping of their own.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import xgrammar as xgr
from transformers import LogitsProcessor

from decoding.errors import SessionError, SettingsError
from decoding.settings import Constraint, check_schema

if TYPE_CHECKING:
    from decoding.engine import Engine

_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+\.cc:\d+: (Check failed: \(.*?\) is false: )?")


_COMPILERS: weakref.WeakKeyDictionary[Engine, xgr.GrammarCompiler] = weakref.WeakKeyDictionary()


def _compiler(engine: Engine) -> xgr.GrammarCompiler:
    """A compiler for the engine's vocabulary, from the bytes of each token (any engine can give them).
    Control tokens get no text, so the grammar never lets them into the output (xgrammar would read
    `<|im_start|>` as those 12 characters)."""
    if engine not in _COMPILERS:
        vocab = [b"" if i in engine.special_ids else engine.token_bytes(i) for i in range(engine.vocab_size)]
        stop = sorted(engine.eos_token_ids)
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=engine.vocab_size, stop_token_ids=stop)
        _COMPILERS[engine] = xgr.GrammarCompiler(info, max_threads=2)  # it caches what it compiled
    return _COMPILERS[engine]


def compile_constraint(engine: Engine, constraint: Constraint) -> xgr.CompiledGrammar:
    """The constraint compiled for the engine's tokenizer; a bad one is one clear line."""
    return _compile(_compiler(engine), constraint)


def _compile(compiler: xgr.GrammarCompiler, constraint: Constraint) -> xgr.CompiledGrammar:
    try:
        if constraint.kind == "json_schema":
            check_schema(constraint.source)
            # One way of writing whitespace: left free, a weak model can fill the output with it.
            return compiler.compile_json_schema(constraint.source, any_whitespace=False)
        if constraint.kind == "json":
            return compiler.compile_json_schema("{}", any_whitespace=False)
        if constraint.kind == "regex":
            return compiler.compile_regex(constraint.source)
        if constraint.kind == "grammar":
            return compiler.compile_grammar(constraint.source)
    except RuntimeError as error:
        raise SettingsError(f"The {constraint.describe().split()[0]} cannot be used: {_said(error)}") from None
    raise SettingsError(f"Unknown constraint kind {constraint.kind!r}.")


def _said(error: Exception) -> str:
    """xgrammar's message without its C++ source prefix, on one line."""
    text = " ".join(str(error).split())
    return _CPP_PREFIX.sub("", text)


class GrammarState(LogitsProcessor):
    """The matcher of one generation: it masks the scores after `context[:start]` plus the tokens the
    grammar has accepted, following the context it is given."""

    def __init__(self, compiled: xgr.CompiledGrammar, start: int, stop_ids: Sequence[int]) -> None:
        self.start = start
        self._matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=list(stop_ids))
        self._accepted: list[int] = []
        self._bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def follow(self, context: Sequence[int]) -> None:
        """Roll back to what the matcher shares with `context` and accept the rest."""
        generated = list(context[self.start :])
        shared = 0
        for ours, theirs in zip(self._accepted, generated):
            if ours != theirs:
                break
            shared += 1
        if len(self._accepted) > shared:
            self._matcher.rollback(len(self._accepted) - shared)
            del self._accepted[shared:]
        for token_id in generated[shared:]:
            if not self._matcher.accept_token(token_id):
                raise SessionError(f"The path holds token {token_id}, which the grammar does not allow there.")
            self._accepted.append(token_id)

    def allowed(self, context: Sequence[int]) -> torch.Tensor:
        """[vocab] booleans: the tokens the grammar allows after `context`."""
        self.follow(context)
        allowed = torch.zeros(self._bitmask.shape[1] * 32, dtype=torch.bool)
        if self._matcher.is_terminated():
            return allowed
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bits = self._bitmask[0].view(torch.uint8)
        for bit in range(8):  # bit j of byte i is token 8 * i + j
            allowed[bit::8] = (bits >> bit) & 1 == 1
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """As a transformers processor: forbidden tokens' scores set to -inf (one row)."""
        self.follow(input_ids[0].tolist())
        if self._matcher.is_terminated():
            return scores.fill_(float("-inf"))  # type: ignore[return-value]
        if self._matcher.fill_next_token_bitmask(self._bitmask):
            xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device), vocab_size=scores.shape[-1])
        return scores

    def state(self, context: Sequence[int]) -> str:
        """'complete', 'may end here' or 'in progress'."""
        self.follow(context)
        if self._matcher.is_terminated():
            return "complete"
        return "may end here" if self._matcher.is_completed() else "in progress"


class GrammarRows(LogitsProcessor):
    """One matcher per row of a batch (beam search's beams), each following its own row's context:
    beams that swap places between steps only roll their matchers back and forth."""

    def __init__(self, states: list[GrammarState]) -> None:
        self.states = states

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, state in enumerate(self.states):
            state(input_ids[row : row + 1], scores[row : row + 1])  # type: ignore[arg-type]  # in place
        return scores

    def allows(self, row: int, context: Sequence[int], token_id: int) -> bool:
        return bool(self.states[row].allowed(context)[token_id])


def grammar_for(engine: Engine, constraint: Constraint, start: int, stop_ids: Sequence[int]) -> GrammarState:
    """A matcher for a generation after `start` prompt tokens; refused on an engine whose scores do not
    cover the whole vocabulary (the mask needs every token's score)."""
    from decoding.engine import ScoresAnyToken

    if isinstance(engine, ScoresAnyToken):
        raise SettingsError(
            f"The {engine.name} engine returns only the top tokens' scores: a grammar needs the whole vocabulary's "
            "(use --engine transformers or llama, or the server's own structured output)."
        )
    return GrammarState(compile_constraint(engine, constraint), start, stop_ids)
