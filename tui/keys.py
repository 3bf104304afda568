"""Your own keys: a keymap file maps binding ids to keys, applied with Textual's `set_keymap` (so the
footer and the palette show them).

`$XDG_CONFIG_HOME/tokenstep/keys.toml` (else `~/.config/tokenstep/keys.toml`), or `--keys FILE`:

    step = "n"                  # one step (default: space, right)
    "pick.highlighted" = "enter,o"

A file that is not TOML, an id no binding has, a value that is not keys, or a key left bound to two
actions is one line naming the place; nothing is applied then.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from decoding.core.errors import TokenstepError
from decoding.core.files import read_text_file
from decoding.core.tokens import one_line

KEY = re.compile(r"[A-Za-z0-9_+\-]+|[!-~]")  # a Textual key name (ctrl+n, right, f1) or one printable character
MAX_FILE = 64 * 1024


def keymap_path(given: Path | None) -> Path | None:
    """The keymap to read: the one given, else the user's own if there is one."""
    if given is not None:
        return given
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    default = Path(config) / "tokenstep" / "keys.toml"
    return default if default.is_file() else None


def read_keymap(path: Path, known: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The keymap in `path`, checked against the bindings: id -> (where it binds: "app" or a
    screen's or widget's name, its default keys)."""
    text = read_text_file(path, "a keymap (keys.toml)")
    if len(text) > MAX_FILE:
        raise TokenstepError(f"{path}: {len(text):,} characters is more than a keymap holds (at most {MAX_FILE:,}).")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TokenstepError(f"{path}: not TOML ({one_line(str(error))}).") from None
    keymap: dict[str, str] = {}
    for binding, keys in table.items():
        if binding not in known:
            raise TokenstepError(f"{path}: no binding is called {one_line(binding)!r} (known: {', '.join(sorted(known))}).")
        names = [key.strip() for key in keys.split(",")] if isinstance(keys, str) else []
        if not names or not all(KEY.fullmatch(name) for name in names):
            raise TokenstepError(f'{path}: {binding} = {one_line(repr(keys))} is not keys (such as "n" or "ctrl+n,right").')
        keymap[binding] = ",".join(names)
    _check_each_key_once(path, known, keymap)
    return keymap


def _check_each_key_once(path: Path, known: dict[str, tuple[str, str]], keymap: dict[str, str]) -> None:
    """A key the file binds must not also be bound, where the same bindings are in force, to another
    action (its default keys or the file's)."""
    owners: dict[tuple[str, str], list[str]] = {}
    for binding, (scope, default) in known.items():
        for key in keymap.get(binding, default).split(","):
            owners.setdefault((scope, key), []).append(binding)
    for binding, keys in keymap.items():
        scope = known[binding][0]
        for key in keys.split(","):
            others = [owner for owner in owners[scope, key] if owner != binding]
            if others:
                raise TokenstepError(f"{path}: {key!r} is bound twice: to {binding} and to {others[0]}.")
