"""The `tokenstep` command: `tokenstep [PROMPT]` opens the explorer, `tokenstep trace PROMPT` prints a trace.

Options are checked before anything heavy is imported, so a typo is answered at once, in one line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from decoding.core.chat import PromptRequest
from decoding.core.errors import TokenstepError
from decoding.core.files import read_text_file
from decoding.core.samplers import SAMPLERS, Sampler, in_order
from decoding.core.settings import (
    CHAPTER_STRATEGIES,
    STRATEGY_KINDS,
    Constraint,
    Strategy,
    check_constraint,
    choices_problem,
    parse_strategies,
    strategy_from_options,
)
from decoding.core.state import Message
from decoding.core.steering import Steering
from decoding.core.tokens import escape_controls, one_line
from decoding.engines.registry import (
    DEFAULT_ENGINE,
    ENGINES,
    LoadOptions,
    check_fits_early,
    engine_options,
    recorded_model,
)
from decoding.engines.runtime import DTYPES
from decoding.explorer.diff import DIFF_FORMATS
from tui.heat_colours import HEAT_COLOURS

if TYPE_CHECKING:  # torch loads after the options are checked
    from decoding.core.engine import Engine
    from decoding.records.compare import Draft

DEFAULT_PROMPT = "Transformers are the"


class UsageError(TokenstepError):
    """The command line itself is wrong (an unknown option, a missing argument)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (the usage block would bury it), raised rather than exited."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


class EscapingStream:
    """A text stream that shows control characters and escape sequences as visible escapes, so
    nothing printed (a model's name from a trace, a prompt, a library's warning) can drive the
    terminal. JSON output is already escaped by `terminal_safe_json`, so it passes unchanged."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(escape_controls(text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="Hub id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    group.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on a GPU that supports it, else float32")
    group.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        choices=ENGINES,
        help="; ".join(f"{entry.option}: {entry.help}" for entry in ENGINES.values()),
    )
    for entry in ENGINES.values():
        own = [option for option in entry.options if option.flag]
        engine_group = parser.add_argument_group(f"{entry.option} (--engine {entry.option})") if own else None
        for option in own:
            assert engine_group is not None and option.flag is not None
            engine_group.add_argument(option.flag, type=option.kind, choices=option.choices, help=option.help)


def _add_strategy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("strategy (transformers' GenerationConfig names)")
    group.add_argument("--strategy", default="greedy", choices=STRATEGY_KINDS)
    _add_sampler_options(group, in_order(sampling_only=True))
    group.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    _add_sampler_options(group, in_order(sampling_only=False))
    group.add_argument(
        "--samplers",
        default="",
        metavar="STAGES",
        help="the chain's order, llama.cpp's names separated by ';' (e.g. 'dry;min_p;temperature'), or llama.cpp "
        "(its default order) or default (generate()'s); every stage switched on must be named",
    )
    group.add_argument("--num-beams", type=int, default=5, help="beams kept by --strategy beam (default 5)")
    group.add_argument(
        "--length-penalty", type=float, default=1.0, help="beam: finished scores are divided by length ** this (default 1)"
    )
    group.add_argument(
        "--early-stopping",
        nargs="?",
        const=True,
        default=False,
        type=_early_stopping,
        help="beam: stop once num_beams hypotheses have finished; `--early-stopping never` searches on as long as one could improve",
    )


def _add_sampler_options(group: argparse._ArgumentGroup, samplers: list[Sampler]) -> None:
    for sampler in samplers:
        group.add_argument(sampler.option, type=sampler.kind, default=sampler.off, help=sampler.help)


def _add_steering_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("steering: a vector added to one layer's output (transformers engine)")
    group.add_argument("--steer-toward", metavar="TEXT", help="text A of a contrast pair: v = mean(layer L on A) - mean(on B)")
    group.add_argument("--steer-away", metavar="TEXT", help="text B of the pair")
    group.add_argument("--steer-vector", type=Path, metavar="FILE", help="or the vector itself, from a .safetensors file")
    group.add_argument("--steer-layer", type=int, metavar="L", help="the decoder layer (0 is the first)")
    group.add_argument("--steer-scale", type=float, default=4.0, metavar="S", help="S * v is added (default 4)")


def steering_from(args: argparse.Namespace) -> Steering | None:
    """The steering the options ask for (None without any); one line if it is not one."""
    if args.steer_toward is None and args.steer_away is None and args.steer_vector is None:
        if args.steer_layer is not None:
            raise TokenstepError("--steer-layer goes with --steer-toward and --steer-away, or --steer-vector.")
        return None
    if args.steer_layer is None:
        raise TokenstepError("Steering needs --steer-layer: the decoder layer whose output the vector is added to.")
    return Steering(
        args.steer_layer,
        args.steer_scale,
        args.steer_toward or "",
        args.steer_away or "",
        str(args.steer_vector) if args.steer_vector is not None else "",
    )


def _add_constraint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a constraint the output must follow (xgrammar)").add_mutually_exclusive_group()
    group.add_argument("--json-schema", type=Path, metavar="FILE", help="a JSON schema (a file)")
    group.add_argument("--json", action="store_true", help="any JSON value")
    group.add_argument("--regex", metavar="PATTERN", help="a regular expression")
    group.add_argument("--grammar", type=Path, metavar="FILE", help="an EBNF / GBNF grammar (a file; its rule `root` first)")


def constraint_from(args: argparse.Namespace) -> Constraint | None:
    """The constraint the options ask for; a file that cannot be read or a schema that is not one is one line."""
    if args.json:
        return Constraint("json")
    if args.regex is not None:
        if not args.regex:
            raise TokenstepError("--regex is empty: give the pattern the output must match.")
        return _checked_constraint(Constraint("regex", args.regex))
    for option, kind in (("json_schema", "json_schema"), ("grammar", "grammar")):
        path = getattr(args, option)
        if path is not None:
            return _checked_constraint(Constraint(kind, read_text_file(path, f"--{option.replace('_', '-')}")))
    return None


def _checked_constraint(constraint: Constraint) -> Constraint:
    check_constraint(constraint)  # what can be told before the model loads; compiling it is refused later
    return constraint


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompt")
    group.add_argument(
        "--chat", action="store_true", help="take the prompt as the user's message, rendered by the model's chat template"
    )
    group.add_argument("--system", help="with --chat: a system message before it")
    group.add_argument(
        "--prompt-file",
        type=Path,
        help="read the prompt from a file (with --chat: the user's message, or, in a file that starts with [, "
        "a JSON list of {role, content} messages)",
    )
    group.add_argument("--prefill", help="start the reply (or the continuation) with this text, forced token by token")


def prompt_request(args: argparse.Namespace, default: str = "") -> PromptRequest:
    """The prompt the options ask for, checked as far as it can be before a model loads."""
    from decoding.core.chat import read_prompt_file

    if args.system is not None and not args.chat:
        raise TokenstepError("--system goes with --chat (a system message starts a conversation).")
    if args.prompt_file is not None and args.prompt is not None:
        raise TokenstepError("Give the prompt as an argument or with --prompt-file, not both.")
    if args.prompt is None and args.prompt_file is None and not default:
        raise TokenstepError("A prompt is needed: give it as an argument or with --prompt-file.")
    text: str = args.prompt if args.prompt is not None else default
    messages: tuple[Message, ...] = ()
    if args.prompt_file is not None:
        read = read_prompt_file(args.prompt_file, args.chat)
        text, messages = (read, ()) if isinstance(read, str) else ("", read)
    request = PromptRequest(text, messages, args.chat, args.system)
    request.check()
    if args.prefill is not None and not args.prefill:
        raise TokenstepError("--prefill is empty: give the text the reply starts with.")
    return request


def _early_stopping(text: str) -> str:
    if text != "never":
        raise argparse.ArgumentTypeError(f"takes no value, or `never` (got {text!r})")
    return text


def build_parsers(add_help: bool = True) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    app = Parser(
        prog="tokenstep",
        add_help=add_help,
        description="Step through a language model's text generation one token at a time. "
        "Also: `tokenstep trace`, `futures`, `compare`, `replay`, `diff` and `serve` (each with --help).",
    )
    app.add_argument("prompt", nargs="?", help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    app.add_argument("--choices", type=int, default=10, help="candidates shown (default 10)")
    app.add_argument("--max-new-tokens", type=int, default=256, help="where play stops (default 256)")
    app.add_argument(
        "--look-ahead", type=int, default=5, help="candidates whose next panel is computed while you read (default 5; 0 = off)"
    )
    sessions = app.add_mutually_exclusive_group()
    sessions.add_argument("--session", type=Path, help="open or create this session file (default: a new one in the data folder)")
    sessions.add_argument("--resume", action="store_true", help="open the last session")
    app.add_argument(
        "--exact-replay",
        action="store_true",
        help="reopen sessions and jump in the tree token by token, as the path was made (bit-identical "
        "scores, ~a forward pass a token) instead of in one pass",
    )
    _add_prompt_options(app)
    _add_model_options(app)
    second = app.add_argument_group("a second model along the same path (both must share a tokenizer)")
    second.add_argument("--second-model", help="Hub id, local folder or .gguf file; `embedded` for the embedded model")
    second.add_argument("--second-engine", choices=ENGINES, help=f"its engine (default: {DEFAULT_ENGINE})")
    second.add_argument("--second-url", help="with --second-engine server: the server serving it")
    _add_strategy_options(app)
    _add_constraint_options(app)
    _add_steering_options(app)
    _add_draft_options(app)
    look = app.add_argument_group("keys and colours")
    look.add_argument(
        "--keys", type=Path, metavar="FILE", help="a keymap (default: $XDG_CONFIG_HOME/tokenstep/keys.toml if there)"
    )
    look.add_argument("--theme", help="one of Textual's themes, such as textual-dark, nord, gruvbox (also in the palette)")
    look.add_argument(
        "--heat-colours",
        default="classic",
        choices=HEAT_COLOURS,
        help="the heat views' colours: classic (apart even in 16 colours), theme (the theme's), colour-blind",
    )

    trace = Parser(prog="tokenstep trace", description="Run N steps headless and print the trace.")
    trace.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    trace.add_argument("--steps", type=int, default=8, help="steps to take (default 8)")
    trace.add_argument("--choices", type=int, default=5, help="candidates per step (default 5)")
    trace.add_argument("--format", default="table", choices=["table", "json", "csv", "markdown"])
    trace.add_argument("--picks", default="", help="ranks to force, one per step, e.g. 0,2,1 (0 = the top one)")
    trace.add_argument(
        "--lens",
        action="store_true",
        help="with --format json: each step's logit lens (top tokens and the chosen one's rank per layer)",
    )
    trace.add_argument(
        "--attribution",
        metavar="METHODS",
        help="with --format json: each step's attribution over its context, by loo (leave-one-out), grad_x_input "
        "and ig (integrated gradients), comma-separated",
    )
    trace.add_argument(
        "--attribution-target",
        type=int,
        default=0,
        metavar="RANK",
        help="attribute the candidate of this rank (0: the chosen token)",
    )
    _add_prompt_options(trace)
    _add_model_options(trace)
    _add_strategy_options(trace)
    _add_constraint_options(trace)
    _add_steering_options(trace)
    _add_draft_options(trace)
    return app, trace


def build_compare_parser() -> argparse.ArgumentParser:
    compare = Parser(
        prog="tokenstep compare",
        description="Run several strategies for exactly N new tokens from the same prompt and seed; "
        "print each continuation with its log-probability under the raw model and its repeated 3-grams.",
    )
    compare.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    compare.add_argument("--new-tokens", type=int, default=32, help="tokens each strategy writes (default 32)")
    compare.add_argument("--format", default="table", choices=["table", "json", "markdown"])
    compare.add_argument(
        "--strategies",
        default=CHAPTER_STRATEGIES,
        help="comma-separated, each kind[:name=value...] (default: the chapter's set: %(default)s)",
    )
    compare.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every strategy (default 0)")
    _add_prompt_options(compare)
    _add_model_options(compare)
    _add_constraint_options(compare)
    _add_draft_options(compare)
    return compare


def strategy_from(args: argparse.Namespace) -> Strategy:
    strategy = strategy_from_options(
        kind=args.strategy,
        **{name: getattr(args, name) for name in SAMPLERS},
        seed=args.seed,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
        samplers=args.samplers,
    )
    constraint = constraint_from(args)
    if constraint is not None and strategy.is_beam:
        raise TokenstepError(
            "A grammar constraint runs with greedy search or sampling here; beam search with one is not built yet."
        )
    return replace(strategy, constraint=constraint)


def load_options_from(args: argparse.Namespace) -> LoadOptions:
    options = _load_options(args)
    check_fits_early(options)  # a model far too big is refused before torch is imported
    return options


def _load_options(args: argparse.Namespace) -> LoadOptions:
    given = {option.field: getattr(args, option.field) for option in engine_options() if option.flag}
    return LoadOptions(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        engine=args.engine,
        **{field: value for field, value in given.items() if value is not None},
    )


def second_options_from(args: argparse.Namespace) -> LoadOptions | None:
    """The second model's options (None without --second-model or --second-engine)."""
    return other_model_options(args, "second")


def draft_from(args: argparse.Namespace) -> tuple[LoadOptions, int] | None:
    """The draft model's options and its tokens a round (None without --draft-model or --draft-engine)."""
    options = other_model_options(args, "draft")
    if options is None:
        if args.draft_tokens is not None:
            raise TokenstepError("--draft-tokens goes with --draft-model or --draft-engine.")
        return None
    tokens = 4 if args.draft_tokens is None else args.draft_tokens
    if not 1 <= tokens <= 16:
        raise TokenstepError(f"--draft-tokens must be from 1 to 16 (got {tokens}).")
    return options, tokens


def other_model_options(args: argparse.Namespace, role: str) -> LoadOptions | None:
    """A model beside the first, by --ROLE-model, --ROLE-engine and --ROLE-url (None without the first two)."""
    model, engine, url = (getattr(args, f"{role}_{name}") for name in ("model", "engine", "url"))
    if model is None and engine is None:
        if url is not None:
            raise TokenstepError(f"--{role}-url goes with --{role}-engine server.")
        return None
    engine = engine or DEFAULT_ENGINE
    # the key and the candidates asked for go to any server; the model's address is its own
    asked_of_a_server = {name: getattr(args, name) for name in ("api_key", "server_top") if getattr(args, name) is not None}
    try:
        return LoadOptions(
            model=None if model in (None, "embedded") else model,
            device=args.device,
            dtype=args.dtype,
            engine=engine,
            url=url,
            **(asked_of_a_server if ENGINES[engine].served else {}),
        )
    except TokenstepError as error:  # LoadOptions names the first model's options; these are this one's
        raise TokenstepError(re.sub(r"--(model|engine|url)\b", rf"--{role}-\1", str(error))) from None


def _add_draft_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speculative decoding: a draft model proposes, this one checks (one tokenizer)")
    group.add_argument("--draft-model", help="Hub id, local folder or .gguf file; `embedded` for the embedded model")
    group.add_argument("--draft-engine", choices=ENGINES, help=f"its engine (default: {DEFAULT_ENGINE})")
    group.add_argument("--draft-url", help="with --draft-engine server: the server serving it")
    group.add_argument("--draft-tokens", type=int, metavar="K", help="tokens the draft proposes a round (1 to 16, default 4)")


def parse_picks(text: str, choices: int) -> list[int]:
    try:
        picks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TokenstepError(f"--picks takes ranks separated by commas, such as 0,2,1 (got {text!r}).") from None
    for rank in picks:
        if not 0 <= rank < choices:
            raise TokenstepError(
                f"--picks rank {rank} is outside the {choices} choices shown (0 to {choices - 1}); raise --choices."
            )
    return picks


def run_trace_command(argv: Sequence[str]) -> int:
    from decoding.explorer.trace_run import TracePlan

    args = build_parsers()[1].parse_args(argv)
    request = prompt_request(args)
    if args.steps < 1:
        raise TokenstepError(f"--steps must be at least 1 (got {args.steps}).")
    if problem := choices_problem(args.choices):
        raise TokenstepError(f"--choices {problem} (got {args.choices}).")
    picks = parse_picks(args.picks, args.choices)
    strategy, options = strategy_from(args), load_options_from(args)
    if strategy.is_beam and (picks or args.prefill):
        raise TokenstepError(
            "--picks and --prefill force tokens on one path; beam search keeps several. Drop them or the beam strategy."
        )
    if args.lens and (strategy.is_beam or args.format != "json"):
        raise TokenstepError("--lens follows one path into the JSON trace: use it with --format json and without beam search.")
    methods = _attribution_methods(args, strategy)

    from decoding.explorer.opening import open_explorer
    from decoding.explorer.trace_run import run_trace
    from decoding.records.trace import format_trace, json_chunks

    # Beam search runs for at most --steps new tokens, as generate(max_new_tokens=steps) would.
    limit = lambda engine: args.steps + len(engine.encode_piece(args.prefill or ""))  # noqa: E731
    steering, draft = steering_from(args), draft_from(args)
    explorer = open_explorer(options, strategy, args.choices, max_new_tokens=limit, progress=_progress_on_terminal)
    if steering is not None:
        explorer.steer(steering)
    if draft is not None:
        from decoding.explorer.opening import add_draft_model

        add_draft_model(explorer, *draft, options, _progress_on_terminal)
    plan = TracePlan(request.build(explorer.engine), args.steps, picks, args.prefill or "", lens=args.lens)
    if args.format != "json":
        print(format_trace(run_trace(explorer, plan), args.format))
        return 0
    record = run_trace(explorer, plan, steps_as_written=not methods)
    if methods:
        from decoding.search.attribution import add_attribution

        add_attribution(explorer.session, record, methods, args.attribution_target)
    for chunk in json_chunks(record):  # a long path's JSON is never whole
        sys.stdout.write(chunk)
    print()
    return 0


def _attribution_methods(args: argparse.Namespace, strategy: Strategy) -> list[str]:
    if args.attribution is None:
        if args.attribution_target:
            raise TokenstepError("--attribution-target goes with --attribution.")
        return []
    names = [name.strip() for name in args.attribution.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("loo", "grad_x_input", "ig")]
    if unknown or not names:
        raise TokenstepError(f"--attribution takes loo, grad_x_input and ig, comma-separated (got {args.attribution!r}).")
    if strategy.is_beam or args.format != "json":
        raise TokenstepError(
            "--attribution adds to each step of a JSON trace: use it with --format json and without beam search."
        )
    if not 0 <= args.attribution_target < args.choices:
        raise TokenstepError(f"--attribution-target must be a rank from 0 to {args.choices - 1} (the candidates shown).")
    return list(dict.fromkeys(names))


def build_replay_parser() -> argparse.ArgumentParser:
    replay = Parser(
        prog="tokenstep replay",
        description="Run a saved trace (trace --format json, or e in the app) again on its model and strategy, "
        "and report step by step whether the same candidates and choices come out.",
    )
    replay.add_argument("trace", type=Path)
    replay.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest probability difference that counts as the same (default 1e-4)"
    )
    group = replay.add_argument_group("model (default: the trace's own)")
    group.add_argument("--model", help="another Hub id, folder or .gguf file")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=DTYPES, help="default: the trace's")
    group.add_argument("--url", help="a server to replay on (default: a server trace's own)")
    group.add_argument("--api-key", help="for a server behind a key (default: $TOKENSTEP_API_KEY)")
    return replay


def run_replay_command(argv: Sequence[str]) -> int:
    from decoding.core.files import read_json_file
    from decoding.explorer.replay import (
        checked_trace,
        draft_of,
        format_checks,
        load_options,
        prompt_difference,
        replay_beam,
        replay_path,
        steering_of,
        strategy_of,
    )

    args = build_replay_parser().parse_args(argv)
    if not 0 <= args.tolerance < float("inf"):  # NaN would compare as "same" at every step
        raise TokenstepError(f"--tolerance must be a number, 0 or more (got {args.tolerance}).")
    record = checked_trace(read_json_file(args.trace, "a tokenstep JSON trace"), str(args.trace))
    beam = "sequence_score" in record
    strategy = strategy_of(record)
    options = load_options(record, model=args.model, device=args.device, dtype=args.dtype, url=args.url, api_key=args.api_key)

    from decoding.explorer.opening import open_explorer

    steps = record["max_new_tokens"] if beam else len(record["steps"])
    explorer = open_explorer(options, strategy, record.get("choices", 10), max_new_tokens=steps, progress=_progress_on_terminal)
    steering = steering_of(record)
    if steering is not None:
        explorer.steer(steering)  # the trace was made under it
    draft = draft_of(record, options.device)
    if draft is not None:  # a sampled path drawn by the speculative rule comes out again only with it
        from decoding.explorer.opening import add_draft_model

        add_draft_model(explorer, *draft, options, _progress_on_terminal)
    engine = explorer.engine
    checks = replay_beam(explorer, record) if beam else replay_path(explorer, record)
    note = prompt_difference(engine, record)
    print(format_checks(checks, args.tolerance, "score" if beam else "probability", note))
    return 0 if note is None and all(check.agrees(args.tolerance) for check in checks) else 1


def build_diff_parser() -> argparse.ArgumentParser:
    diff = Parser(
        prog="tokenstep diff",
        description="Two models along one recorded path: the trace's own model and a second one read the same token ids; "
        "per token, both log-probabilities, their difference, the KL divergence of the two next-token distributions "
        "and whether their greedy choices agree. Both must share a tokenizer.",
    )
    diff.add_argument("trace", type=Path, help="a JSON trace (trace --format json, or e in the app)")
    diff.add_argument("--format", default="table", choices=DIFF_FORMATS)
    group = diff.add_argument_group("the second model (default: the trace's own, e.g. under another --engine)")
    group.add_argument("--model", help="Hub id, local folder or .gguf file")
    group.add_argument("--engine", choices=ENGINES, help="default: the trace's")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=DTYPES, help="default: the trace's")
    group.add_argument("--url", help="a server serving the second model (with --engine server)")
    group.add_argument("--api-key", help="for a server behind a key (default: $TOKENSTEP_API_KEY)")
    return diff


def run_diff_command(argv: Sequence[str]) -> int:
    from decoding.core.files import read_json_file
    from decoding.explorer.replay import checked_trace, load_options

    args = build_diff_parser().parse_args(argv)
    record = checked_trace(read_json_file(args.trace, "a tokenstep JSON trace"), str(args.trace))
    first_options = load_options(record, device=args.device)
    second_options = load_options(
        record, model=args.model, engine=args.engine, device=args.device, dtype=args.dtype, url=args.url, api_key=args.api_key
    )

    from decoding.engines.registry import load_engine
    from decoding.explorer.diff import diff_record, format_diff
    from decoding.explorer.opening import open_explorer
    from decoding.search.second import SecondModel

    steps = len(record["steps"]) + 1
    explorer = open_explorer(
        first_options, choices=record.get("choices", 10), max_new_tokens=steps, progress=_progress_on_terminal
    )
    second = load_engine(second_options, _progress_on_terminal)
    print(format_diff(diff_record(explorer, SecondModel(second, second.model_id), record), args.format))
    return 0


def build_futures_parser() -> argparse.ArgumentParser:
    futures = Parser(
        prog="tokenstep futures",
        description="Sample N continuations of up to L tokens from the prompt under the strategy (future i with seed + i: "
        "what `tokenstep trace --seed S+i` gives), side by side, and group them by outcome: counts, shares with their 95 %% "
        "Wilson interval, and the model's probability of the short prefix that decided an outcome.",
    )
    futures.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    futures.add_argument("--n", type=int, default=12, help="how many futures (default 12)")
    futures.add_argument("--new-tokens", type=int, default=16, help="the most tokens each future writes (default 16)")
    futures.add_argument(
        "--outcome",
        metavar="REGEX",
        help="what a future comes to: the first capture group of this expression (default: the first line; "
        "with --chat, the reply up to its end)",
    )
    futures.add_argument("--format", default="table", choices=["table", "json"])
    _add_prompt_options(futures)
    _add_model_options(futures)
    second = futures.add_argument_group("a second model: each future's log-probability under it too")
    second.add_argument("--second-model", help="Hub id, local folder or .gguf file; `embedded` for the embedded model")
    second.add_argument("--second-engine", choices=ENGINES, help=f"its engine (default: {DEFAULT_ENGINE})")
    second.add_argument("--second-url", help="with --second-engine server: the server serving it")
    _add_strategy_options(futures)
    _add_constraint_options(futures)
    return futures


def run_futures_command(argv: Sequence[str]) -> int:
    from decoding.search.futures import check_request
    from decoding.search.outcomes import OutcomeRule

    args = build_futures_parser().parse_args(argv)
    request = prompt_request(args)
    check_request(args.n, args.new_tokens)
    if args.outcome is not None:
        OutcomeRule(args.outcome)  # a bad expression is refused before the model loads
    strategy, options, second_options = strategy_from(args), load_options_from(args), second_options_from(args)
    if strategy.is_beam:
        raise TokenstepError("Futures are paths sampled one token at a time: use --strategy sample (or greedy).")

    from decoding.explorer.opening import add_second_model, open_explorer
    from decoding.records.futures import format_futures, futures_record
    from decoding.records.trace import terminal_safe_json

    explorer = open_explorer(options, strategy, max_new_tokens=args.new_tokens, progress=_progress_on_terminal)
    if second_options is not None and (left_out := add_second_model(explorer, second_options, _progress_on_terminal)):
        raise TokenstepError(left_out)
    explorer.new_prompt(request.build(explorer.engine))
    if args.prefill:
        explorer.force_text(args.prefill)
    record = futures_record(explorer.session, explorer.futures(args.n, args.new_tokens, args.outcome))
    print(terminal_safe_json(record) if args.format == "json" else format_futures(record))
    return 0


def build_serve_parser() -> argparse.ArgumentParser:
    serve = Parser(
        prog="tokenstep serve",
        description="Serve the explorer to a browser (textual-serve): each browser session runs the app with the options "
        "that follow as a process of its own. The page and its websocket need the access token printed at the start. "
        "Every option of the app (tokenstep --help) may follow.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="where to listen (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--token", help="the access token (default: $TOKENSTEP_TOKEN, else a new random one per start)")
    return serve


def run_serve_command(argv: Sequence[str]) -> int:
    args, app_args = build_serve_parser().parse_known_args(argv)
    if not 1 <= args.port <= 65535:
        raise TokenstepError(f"--port must be from 1 to 65535 (got {args.port}).")
    app = build_parsers()[0].parse_args(app_args)  # the app's options, checked now rather than in each browser
    if app.session is not None or app.resume:
        raise TokenstepError("--session and --resume go with one app; each browser session keeps a session file of its own.")
    prompt_request(app, default=DEFAULT_PROMPT)
    strategy_from(app)
    load_options_from(app)
    second_options_from(app)
    look_from(app)
    steering_from(app)
    draft_from(app)

    from tui.serve import TokenServer, app_command, check_token, new_token

    token = args.token if args.token is not None else os.environ.get("TOKENSTEP_TOKEN") or new_token()
    try:
        check_token(token)
    except ValueError as error:
        raise TokenstepError(f"--token: {error}.") from None
    try:
        TokenServer(app_command(app_args), args.host, args.port, token).serve()
    except OSError as error:  # the port is taken, the host is not this machine's
        raise TokenstepError(f"cannot listen on {args.host}:{args.port}: {one_line(str(error))}.") from None
    return 0


def run_compare_command(argv: Sequence[str]) -> int:
    args = build_compare_parser().parse_args(argv)
    request = prompt_request(args)
    if args.new_tokens < 1:
        raise TokenstepError(f"--new-tokens must be at least 1 (got {args.new_tokens}).")
    constraint = constraint_from(args)
    strategies = [replace(s, constraint=constraint) for s in parse_strategies(args.strategies, seed=args.seed)]
    options = load_options_from(args)

    from decoding.engines.registry import load_engine
    from decoding.records.compare import compare, comparison_record, format_comparison

    engine = load_engine(options, _progress_on_terminal)
    prompt = request.build(engine)
    prefix_ids = list(prompt.ids) + (engine.encode_piece(args.prefill) if args.prefill else [])
    draft = compare_draft(engine, options, draft_from(args))
    results = compare(engine, prefix_ids, strategies, args.new_tokens, progress=_compare_progress, draft=draft)
    print(format_comparison(comparison_record(engine.decode(prefix_ids), args.new_tokens, results), args.format))
    return 0


def compare_draft(engine: Engine, options: LoadOptions, asked: tuple[LoadOptions, int] | None) -> Draft | None:
    """The draft `--draft-model` asks for, checked against the compared model (one line if it cannot be one)."""
    if asked is None:
        return None
    from decoding.explorer.opening import load_draft
    from decoding.records.compare import Draft
    from decoding.search.second import check_same_tokenizer

    draft_options, tokens = asked
    draft, name = load_draft(draft_options, options, engine, _progress_on_terminal)
    check_same_tokenizer(engine, draft, f"--model {engine.model_id}", f"--draft-model {name}")
    return Draft(draft, tokens, name)


def _compare_progress(done: int, total: int) -> None:
    _progress_on_terminal(f"compared {done} of {total} strategies")


def _progress_on_terminal(message: str) -> None:
    """Loading news for a person watching (a GGUF conversion takes a while); pipes stay clean."""
    if sys.stderr.isatty():
        print(f"tokenstep: {one_line(message)}", file=sys.stderr)


def run_app_command(argv: Sequence[str]) -> int:
    args = build_parsers()[0].parse_args(argv)
    request = prompt_request(args, default=DEFAULT_PROMPT)
    if problem := choices_problem(args.choices):
        raise TokenstepError(f"--choices {problem} (got {args.choices}).")
    if args.look_ahead < 0:
        raise TokenstepError(f"--look-ahead must be 0 or more (got {args.look_ahead}).")
    if args.max_new_tokens < 1:
        raise TokenstepError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens}).")
    from decoding.records import session_file
    from tui.app import TokenstepApp

    second = second_options_from(args)
    path = session_file.last_session() if args.resume else args.session or session_file.new_session_path()
    saved = session_file.load_if_there(path)  # a damaged file stops here, untouched
    options, strategy, choices = load_options_from(args), strategy_from(args), args.choices
    if saved is not None:
        strategy, choices = saved.strategy, saved.choices
        if args.model is None:  # reopen on the model it was made with
            recorded = recorded_model(
                saved.model.get("model_id"), saved.model.get("engine"), saved.model.get("dtype"), saved.model.get("url")
            )
            if args.dtype != "auto":
                recorded["dtype"] = args.dtype
            options = replace(options, **recorded)
    keymap, theme = look_from(args)
    steering, draft = steering_from(args), draft_from(args)
    with screen_apart_from_native_stderr():
        app = TokenstepApp(
            options,
            strategy,
            prompt=request,
            prefill=args.prefill,
            choices=choices,
            max_new_tokens=args.max_new_tokens,
            look_ahead=args.look_ahead,
            exact_replay=args.exact_replay,
            session_path=path,
            saved=saved,
            second_options=second,
            keymap=keymap,
            theme=theme,
            heat_colours=args.heat_colours,
            steering=steering,
            draft=draft,
        )
        app.run()
    exit_without_waiting(app.runner.thread, app.return_code or 0)
    return app.return_code or 0


def look_from(args: argparse.Namespace) -> tuple[dict[str, str], str | None]:
    """The keymap (checked against every binding) and the theme the options ask for; one line if not."""
    from textual.theme import BUILTIN_THEMES

    from tui.app import known_bindings
    from tui.keys import keymap_path, read_keymap

    if args.theme is not None and args.theme not in BUILTIN_THEMES:
        raise TokenstepError(
            f"--theme: no theme is called {one_line(args.theme)!r} (themes: {', '.join(sorted(BUILTIN_THEMES))})."
        )
    path = keymap_path(args.keys)
    return (read_keymap(path, known_bindings()) if path is not None else {}), args.theme


QUIT_GRACE_SECONDS = 0.3  # how long a model command still running is given to end, once the app has quit


def exit_without_waiting(model_thread: threading.Thread, code: int) -> None:
    """Quitting never waits on model work (a request a server never answers, a long session opening):
    a command still running is given QUIT_GRACE_SECONDS to end (a server's request is cut short at
    once), then the process ends without it, as kill -9 would end it (session files are appended to
    line by line, and a torn last line is dropped when read)."""
    if model_thread.is_alive():
        model_thread.join(QUIT_GRACE_SECONDS)
    if model_thread.is_alive():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextmanager
def screen_apart_from_native_stderr() -> Iterator[None]:
    """Textual draws the screen on stderr (file descriptor 2), where native libraries also write:
    xgrammar's C++ warnings, for one, would land in the middle of the screen. While the app runs, the
    screen gets a descriptor of its own and descriptor 2 goes nowhere; both are put back after."""
    if not os.isatty(2):
        yield
        return
    sys.stderr.flush()
    screen_fd = os.dup(2)
    original = sys.__stderr__
    sys.__stderr__ = os.fdopen(screen_fd, "w", encoding="utf-8", errors="replace", closefd=False)  # type: ignore[misc]  # Final in the stubs
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 2)
    os.close(nowhere)
    try:
        yield
    finally:
        sys.__stderr__.flush()
        os.dup2(screen_fd, 2)
        os.close(screen_fd)
        sys.__stderr__ = original  # type: ignore[misc]


COMMANDS = {
    "trace": run_trace_command,
    "futures": run_futures_command,
    "serve": run_serve_command,
    "compare": run_compare_command,
    "replay": run_replay_command,
    "diff": run_diff_command,
}


def command_and_arguments(argv: list[str]) -> tuple[Callable[[Sequence[str]], int] | None, list[str]]:
    """The subcommand the command line names (None: the app) and the arguments it takes. A
    subcommand is the first word that is not an option or an option's value, so `tokenstep --dtype
    float32 trace Hi` runs a trace with --dtype float32, as `tokenstep trace Hi --dtype float32` does."""
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]], argv[1:]
    front = build_parsers(add_help=False)[0]  # the app's options, as they come before a prompt or a subcommand
    front.add_argument("after_the_first_word", nargs=argparse.REMAINDER)
    try:
        known, _ = front.parse_known_args(argv)
    except UsageError:
        return None, argv  # the app's parser says what is wrong
    at = len(argv) - len(known.after_the_first_word) - 1  # where the first word stands
    if known.prompt not in COMMANDS or "--" in argv[:at]:  # after `--` it is the prompt
        return None, argv
    return COMMANDS[known.prompt], argv[:at] + argv[at + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    try:
        command, argv = command_and_arguments(list(sys.argv[1:] if argv is None else argv))
        if command is not None:  # the app paints through Textual, which never prints our strings raw
            sys.stdout, sys.stderr = EscapingStream(stdout), EscapingStream(stderr)
        return command(argv) if command is not None else run_app_command(argv)
    except TokenstepError as error:
        print(f"tokenstep: {one_line(str(error))}", file=stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a fault of ours, not of the input: still one line (TOKENSTEP_DEBUG=1 shows the traceback)
        if os.environ.get("TOKENSTEP_DEBUG"):
            raise
        print(f"tokenstep: internal error, please report it: {one_line(f'{type(error).__name__}: {error}')}", file=stderr)
        return 1
    finally:
        sys.stdout, sys.stderr = stdout, stderr


if __name__ == "__main__":
    sys.exit(main())
