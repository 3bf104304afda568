"""JSON from outside (files, schemas, server replies) parsed with its depth checked first.

Python's parser recurses once per level: a value nested thousands deep ends in RecursionError, and
one nested hundreds deep parses but breaks whatever walks it next. The depth is checked before the
parse, in linear passes of C-level string work, so JSON of any depth is refused in one line.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 64  # deeper than any trace, session, schema or server reply of ours

# A string, or an unterminated one running to the end: every byte belongs to at most one match, so
# the pass stays linear on hostile text (no start inside a string is ever tried after a failure).
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
# Objects count as arrays for depth: "{" reads as "[", "}" as "]", and everything else goes.
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


class JsonError(ValueError):
    """The text is not JSON, or is nested deeper than `MAX_JSON_DEPTH`; the message says which."""


def nests_deeper_than(data: bytes, levels: int) -> bool:
    """Whether the arrays and objects of JSON text `data` nest more than `levels` deep (strings ignored)."""
    brackets = _STRINGS.sub(b"", data).translate(_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(levels):  # each pass peels the innermost level
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):  # nothing left, or brackets that do not pair: the parser will say so
            return False
        brackets = peeled
    return b"[]" in brackets


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in `text`; JsonError (one line) if it is not JSON or nests deeper than `max_depth`."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if nests_deeper_than(data, max_depth):
        raise JsonError(f"its JSON is nested more than {max_depth} levels deep, deeper than tokenstep reads")
    try:
        return json.loads(data)
    except RecursionError:  # unpaired brackets nested beyond the interpreter's limit
        raise JsonError(f"its JSON is nested more than {max_depth} levels deep, deeper than tokenstep reads") from None
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise JsonError(f"not valid JSON ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
