"""Grammar constraints (JSON schemas, any JSON, regular expressions, EBNF/GBNF grammars) with xgrammar,
the library vLLM and SGLang constrain with: compiled once per model and constraint, then a matcher per
generation that masks what the grammar forbids.

The matcher's state is a function of the tokens generated since the prompt, and it follows them:
before each use it is rolled back to the tokens it shares with the path and fed the rest (xgrammar's
rollback is exact), so undo, jumps in the tree and reopened sessions need no bookkeeping of their own.
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, NoReturn

import torch
import xgrammar as xgr
from transformers import LogitsProcessor

from decoding.core.errors import SessionError, SettingsError
from decoding.core.settings import Constraint, check_constraint

if TYPE_CHECKING:
    from decoding.core.engine import Engine

_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+\.cc:\d+: (Check failed: \(.*?\) is false: |Warning: )?")
_SAID_CHARS = 300  # xgrammar may quote a whole schema back

# A compile runs in a child process under this deadline: xgrammar's C++ cannot be stopped from Python,
# and its time grows faster than the text (here, 2 cores: a 50,000-value enum 5 s, 100,000 values 20 s;
# an object of 1,000 optional properties 5.6 s, 5,000 over 100 s; most schemas and patterns take ms).
COMPILE_SECONDS = 10.0
COMPILE_THREADS = 2
_NOTE_AFTER_SECONDS = 1.0  # a compile slower than this is said while it runs
_REPLY_BYTES = 4096  # the child's reply: one line, written at once (PIPE_BUF)

_COMPILERS: weakref.WeakKeyDictionary[Engine, tuple[xgr.TokenizerInfo, xgr.GrammarCompiler]] = weakref.WeakKeyDictionary()
_TRIED: weakref.WeakKeyDictionary[Engine, set[Constraint]] = weakref.WeakKeyDictionary()  # compiled cleanly in a child
_compile_note: ContextVar[Callable[[str], object] | None] = ContextVar("compile_note", default=None)


@contextmanager
def compile_notes(note: Callable[[str], object]) -> Iterator[None]:
    """Within it, a compile that takes more than a second says so through `note` (a view's progress line)."""
    token = _compile_note.set(note)
    try:
        yield
    finally:
        _compile_note.reset(token)


def _compiler(engine: Engine) -> tuple[xgr.TokenizerInfo, xgr.GrammarCompiler]:
    """A compiler for the engine's vocabulary, from the bytes of each token (any engine can give them).
    Control tokens get no text, so the grammar never lets them into the output (xgrammar would read
    `<|im_start|>` as those 12 characters)."""
    if engine not in _COMPILERS:
        vocab = [b"" if i in engine.special_ids else engine.token_bytes(i) for i in range(engine.vocab_size)]
        stop = sorted(engine.eos_token_ids)
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=engine.vocab_size, stop_token_ids=stop)
        _COMPILERS[engine] = info, xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS)  # it caches what it compiled
    return _COMPILERS[engine]


def compile_constraint(engine: Engine, constraint: Constraint) -> xgr.CompiledGrammar:
    """The constraint compiled for the engine's tokenizer; a bad one is one clear line.

    The first compile of each constraint is tried in a child process first, under COMPILE_SECONDS, its
    stderr kept from the terminal: xgrammar's warnings there (a pattern's lookahead, multipleOf on a
    number, a $ref it cannot follow) mean it would drop part of the constraint, so they refuse it, as
    a grammar no token can begin does. What passes compiles here again, as quickly, without a word."""
    check_constraint(constraint)
    info, compiler = _compiler(engine)
    tried = _TRIED.setdefault(engine, set())
    if constraint not in tried:
        problem = _trial(info, constraint)
        if problem:
            raise SettingsError(f"The {constraint.name} cannot be used: {problem}")
        tried.add(constraint)
    try:
        return _compile(compiler, constraint)
    except (RuntimeError, ValueError) as error:  # where no child could try it first
        raise SettingsError(f"The {constraint.name} cannot be used: {_said(error)}") from None


def _compile(compiler: xgr.GrammarCompiler, constraint: Constraint) -> xgr.CompiledGrammar:
    if constraint.kind == "json_schema":
        # One way of writing whitespace: left free, a weak model can fill the output with it.
        return compiler.compile_json_schema(constraint.source, any_whitespace=False)
    if constraint.kind == "json":
        return compiler.compile_json_schema("{}", any_whitespace=False)
    if constraint.kind == "regex":
        return compiler.compile_regex(constraint.source)
    if constraint.kind == "grammar":
        return compiler.compile_grammar(constraint.source)
    raise SettingsError(f"Unknown constraint kind {constraint.kind!r}.")


def _said(error: Exception | str) -> str:
    """xgrammar's message without its C++ source prefix, on one line, not too long to read."""
    text = _CPP_PREFIX.sub("", " ".join(str(error).split()))
    if not text and isinstance(error, Exception):
        text = f"xgrammar refused it without saying why ({type(error).__name__})"
    return text if len(text) <= _SAID_CHARS else text[: _SAID_CHARS - 1] + "…"


# --- the trial compile, in a child process -----------------------------------------------------------


def _trial(info: xgr.TokenizerInfo, constraint: Constraint) -> str:
    """What is wrong with the constraint compiled for `info`'s vocabulary ('' if nothing), from a
    forked child that compiles it under the deadline. Without fork it is compiled here, unguarded."""
    if not hasattr(os, "fork"):
        return ""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no memory for a child: compiled here, unguarded
        os.close(read_end)
        os.close(write_end)
        return ""
    if pid == 0:
        os.close(read_end)
        _child(info, constraint, write_end)
    os.close(write_end)
    reply = None
    try:
        reply = _read_reply(read_end, constraint)
    finally:
        os.close(read_end)
        if reply is None:  # past the deadline, or the parent interrupted
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    if reply is None:
        return (
            f"compiling it for this model's vocabulary takes longer than {COMPILE_SECONDS:g} s (xgrammar's time "
            "grows with enum values, optional properties and bounded repeats): make it smaller."
        )
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return f"xgrammar stopped while compiling it ({f'signal {-code}' if code < 0 else f'status {code}'})."
    return reply


def _read_reply(read_end: int, constraint: Constraint) -> str | None:
    """The child's one-line verdict, read until it exits; None once the deadline has passed. A compile
    still running after a second is said through the compile note, if there is one."""
    deadline = time.monotonic() + COMPILE_SECONDS
    note = _compile_note.get()
    reply = b""
    while (wait := deadline - time.monotonic()) > 0:
        if not select.select([read_end], [], [], min(wait, _NOTE_AFTER_SECONDS) if note else wait)[0]:
            if note is not None:
                note(f"compiling the {constraint.name} for the model's vocabulary (at most {COMPILE_SECONDS:g} s)")
                note = None
            continue
        chunk = os.read(read_end, _REPLY_BYTES)
        if not chunk:
            return reply.decode("utf-8", "replace")
        reply += chunk
    return None


def _child(info: xgr.TokenizerInfo, constraint: Constraint, write_end: int) -> NoReturn:
    """In the forked child: compile, say in one line what is wrong ('' if nothing), and exit at once
    (no cleanup of the parent's: its threads, files and terminal are not this process's)."""
    code = 1
    try:
        _leave_signals_to_the_parent()
        _limit_cpu_time()
        with tempfile.TemporaryFile() as stderr:
            os.dup2(stderr.fileno(), 2)  # xgrammar's C++ writes there, never to the person's terminal
            problem = _problem(info, constraint)
            stderr.seek(0)
            dropped = _warnings(stderr.read())
        if not problem and dropped:
            problem = f"xgrammar would silently drop part of it: {dropped.rstrip('.')}."
        os.write(write_end, problem.encode("utf-8")[:_REPLY_BYTES])
        code = 0
    finally:
        os._exit(code)


def _leave_signals_to_the_parent() -> None:
    """The parent's handlers (the app's, for a resize or ctrl+z) are not this process's to run: ctrl+c
    and ctrl+z are the parent's to answer, the rest take their default."""
    ignored = {"SIGINT", "SIGTSTP"}
    for name in ("SIGINT", "SIGTSTP", "SIGWINCH", "SIGCONT", "SIGTTOU", "SIGTTIN"):
        if hasattr(signal, name):
            with suppress(ValueError):  # (only a main thread may; after fork the forking thread is one)
                signal.signal(getattr(signal, name), signal.SIG_IGN if name in ignored else signal.SIG_DFL)


def _limit_cpu_time() -> None:
    """A child left behind (its parent killed) ends by itself; and leaves no core file when it does."""
    import resource

    seconds = math.ceil(COMPILE_SECONDS * COMPILE_THREADS) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _problem(info: xgr.TokenizerInfo, constraint: Constraint) -> str:
    compiler = xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
    try:
        compiled = _compile(compiler, constraint)
    except Exception as error:  # xgrammar's RuntimeError, or text its C++ cannot take
        return _said(error)
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    if not bool(bitmask.any()):
        return "it matches nothing this model can write: no token of its vocabulary can begin it."
    return ""


def _warnings(stderr: bytes) -> str:
    """xgrammar's warnings, each once, on one line."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    warnings = dict.fromkeys(_said(line) for line in lines if ": Warning: " in line)
    return _said("; ".join(warnings))


class GrammarState(LogitsProcessor):
    """The matcher of one generation: it masks the scores after `context[:start]` plus the tokens the
    grammar has accepted, following the context it is given."""

    def __init__(
        self, compiled: xgr.CompiledGrammar, start: int, stop_ids: Sequence[int], control_ids: Iterable[int] = ()
    ) -> None:
        self.start = start
        self._matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=list(stop_ids))
        # Control tokens are never text (the compiler gave them no bytes): the matcher would take one that
        # is not a stop token as matching nothing, or refuse it with a warning on stderr. Refused here first.
        info = compiled.tokenizer_info
        self._never = frozenset(info.special_token_ids).union(control_ids) - frozenset(stop_ids)
        self._vocab_size = info.vocab_size
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
            never = token_id in self._never or not 0 <= token_id < self._vocab_size
            if never or not self._matcher.accept_token(token_id):
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
    from decoding.core.engine import ScoresAnyToken

    if isinstance(engine, ScoresAnyToken):
        raise SettingsError(
            f"The {engine.name} engine returns only the top tokens' scores: a grammar needs the whole vocabulary's "
            "(use --engine transformers or llama, or the server's own structured output)."
        )
    return GrammarState(compile_constraint(engine, constraint), start, stop_ids, engine.special_ids)
