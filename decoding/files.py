"""Reading and writing the files a person hands tokenstep (sessions, traces, prompts) without surprises.

Reads refuse anything but a regular file of sane size (a FIFO or a device would block or never end)
and text that is not UTF-8; writes go to a temporary file renamed into place, through a symlink to
its target, so a killed process never leaves a damaged file and a link stays a link.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from decoding.errors import TokenstepError

MAX_READ_BYTES = 1 << 30  # 1 GiB: far beyond any session or trace; a bigger file is not one of ours


class FileError(TokenstepError):
    """A file could not be read as what it should be; the message names it and says why."""


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of the regular file at `path`; FileError naming `what` it should be otherwise."""
    try:
        with open(path, "rb", opener=_open_without_blocking) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileError(f"{path} is not a regular file, so it cannot be {what}.")
            if info.st_size > MAX_READ_BYTES:
                raise FileError(f"{path} is {info.st_size >> 20} MiB, too large to be {what}.")
            data = file.read(MAX_READ_BYTES + 1)
    except OSError as error:
        raise FileError(f"{path}: cannot read {what} ({error.strerror or error}).") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileError(f"{path} is not UTF-8 text, so it cannot be {what} (byte {error.start}).") from None


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value in the file at `path`; FileError if it is not a readable JSON file."""
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FileError(f"{path} is not {what}: not valid JSON ({error}).") from None
    except RecursionError:
        raise FileError(f"{path} is not {what}: its JSON is nested too deeply.") from None


def _open_without_blocking(path: str, flags: int) -> int:
    """Open with O_NONBLOCK, so that opening a FIFO with no writer returns at once (and is then refused)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at `path` (the target, if `path` is a symlink) with `text`, atomically."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise FileError(f"{path} is not a regular file: nothing was written to it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)  # no fsync: the rename is atomic against a killed process, and an fsync
        os.replace(temporary, target)  # per step cost more than the step (it guards only against power loss)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> int:
    """Append `line` to the existing regular file at `path` (the target, if a symlink) in one write;
    FileNotFoundError if it is gone. Returns the bytes written."""
    data = line.encode("utf-8")
    descriptor = _open_without_blocking(os.path.realpath(path), os.O_WRONLY | os.O_APPEND)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise FileError(f"{path} is not a regular file: nothing was written to it.")
        written = 0
        while written < len(data):  # a regular file takes it all at once; a short write goes on
            written += os.write(descriptor, data[written:])
    finally:
        os.close(descriptor)
    return len(data)
