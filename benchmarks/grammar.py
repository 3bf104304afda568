"""16. The cost of a grammar constraint per step, on the embedded model: greedy under a JSON schema
against the same tokens appended without one (the same model work), and the compile time apart.

The constraint's work each step: roll the matcher to the path, fill xgrammar's token bitmask, apply it
to the logits, and mark the panel's forbidden candidates.
"""

from __future__ import annotations

import json

from common import Result, best_of, load, seconds, table

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "genre": {"enum": ["fiction", "science", "history"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["title", "genre", "tags"],
}
PROMPT = "A book as JSON:"
MAX_STEPS = 48


def run() -> list[Result]:
    from decoding.core import grammar
    from decoding.core.settings import Constraint, Strategy
    from decoding.search.session import Session

    engine = load()
    constraint = Constraint("json_schema", json.dumps(SCHEMA))
    vocabulary = seconds(lambda: grammar._compiler(engine))  # the tokenizer's vocabulary, once per model
    compile_once = seconds(lambda: grammar.compile_constraint(engine, constraint))
    constrained, plain = Session(engine, Strategy(constraint=constraint)), Session(engine)

    def under_constraint() -> None:
        constrained.reset(PROMPT)
        while not constrained.finished and len(constrained.path) < MAX_STEPS:
            constrained.step()
            constrained.snapshot()

    under_constraint()
    tokens = [token.token_id for token in constrained.path]

    def same_tokens_plain() -> None:
        plain.reset(PROMPT)
        for token_id in tokens:
            plain.force(token_id)
            plain.snapshot()

    ours, baseline = best_of(under_constraint), best_of(same_tokens_plain)
    table(
        f"Grammar constraint: {len(tokens)} steps under a JSON schema, ms a step",
        ["constrained", "same tokens, no constraint", "ratio", "vocabulary setup ms", "compile ms"],
        [[1000 * ours / len(tokens), 1000 * baseline / len(tokens), ours / baseline, 1000 * vocabulary, 1000 * compile_once]],
    )
    return [
        Result(
            "grammar_step",
            ours / baseline,
            "<",
            1.1,
            measured=f"a step under a JSON schema: {1000 * ours / len(tokens):.1f} ms (compiled once: {1000 * compile_once:.0f} ms)",
            baseline=f"the same tokens without it: {1000 * baseline / len(tokens):.1f} ms",
        )
    ]
