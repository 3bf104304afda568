"""Reading and writing the files a person hands tokenstep (sessions, traces, prompts) without surprises.

Reads refuse anything but a regular file of sane size (a FIFO or a device would block or never end)
and text that is not UTF-8; writes go to a temporary file renamed into place, through a symlink to
its target, so a killed process never leaves a damaged file and a link stays a link.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from decoding.core.errors import TokenstepError
from decoding.core.json_text import JsonError, parse_json

MAX_READ_BYTES = 1 << 30  # 1 GiB: far beyond any session or trace; a bigger file is not one of ours
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255  # Linux's PATH_MAX and NAME_MAX: longer names name no file
SHOWN_PATH_CHARACTERS = 120  # a longer name is cut short in messages


class FileError(TokenstepError):
    """A file could not be read as what it should be; the message names it and says why."""


def read_file_bytes(path: Path, what: str) -> bytes:
    """The bytes of the regular file at `path`; FileError naming `what` it should be otherwise."""
    if problem := path_problem(str(path)):
        raise FileError(f"{shown_path(path)} cannot be {what}: {problem}.")
    try:
        with open(path, "rb", opener=_open_without_blocking) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileError(f"{shown_path(path)} is not a regular file, so it cannot be {what}.")
            if info.st_size > MAX_READ_BYTES:
                raise FileError(f"{shown_path(path)} is {info.st_size >> 20} MiB, too large to be {what}.")
            data = file.read(MAX_READ_BYTES + 1)
    except OSError as error:
        raise FileError(f"{shown_path(path)}: cannot read {what} ({error.strerror or error}).") from None
    if data is None:  # a kernel file that reads like a regular one (/proc/kmsg) has nothing to give yet
        raise FileError(f"{shown_path(path)} gives nothing without waiting, so it cannot be {what}.")
    if len(data) > MAX_READ_BYTES:  # a kernel file whose size says 0
        raise FileError(f"{shown_path(path)} holds more than {MAX_READ_BYTES >> 20} MiB, too much to be {what}.")
    return data


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of the regular file at `path`; FileError naming `what` it should be otherwise."""
    return decoded_text(read_file_bytes(path, what), path, what)


def decoded_text(data: bytes, path: Path, what: str) -> str:
    """`data`, read from `path`, as UTF-8 text; FileError naming `what` it should be otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileError(f"{shown_path(path)} is not UTF-8 text, so it cannot be {what} (byte {error.start}).") from None


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value in the file at `path`; FileError if it is not a readable JSON file (of any depth)."""
    return json_of(read_text_file(path, what), path, what)


def json_of(text: str, path: Path, what: str) -> Any:
    """The JSON value in `text`, read from `path`; FileError naming `what` it should be otherwise."""
    try:
        return parse_json(text)
    except JsonError as error:
        raise FileError(f"{shown_path(path)} is not {what}: {error}.") from None


def path_problem(name: str) -> str | None:
    """Why `name` cannot name a file (too long, a NUL character), before the system is asked; None
    if it can."""
    if "\0" in name:
        return "its name holds a NUL character"
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate that no byte was decoded into
        return "its name is not valid text"
    if len(encoded) > MAX_PATH_BYTES:
        return f"its name is {len(encoded):,} bytes long, and a path has at most {MAX_PATH_BYTES:,}"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > MAX_NAME_BYTES:
        return f"a part of its name is {longest:,} bytes long, and a file name has at most {MAX_NAME_BYTES}"
    return None


def shown_path(path: Path | str) -> str:
    """A file's name for a message: whole, or its start when it is very long."""
    name = str(path)
    return name if len(name) <= SHOWN_PATH_CHARACTERS else f"{name[: SHOWN_PATH_CHARACTERS - 1]}…"


def _open_without_blocking(path: str, flags: int) -> int:
    """Open with O_NONBLOCK, so that opening a FIFO with no writer returns at once (and is then refused)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at `path` (the target, if `path` is a symlink) with `text`, atomically."""
    if problem := path_problem(str(path)):
        raise FileError(f"Nothing can be written to {shown_path(path)}: {problem}.")
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise FileError(f"{shown_path(path)} is not a regular file: nothing was written to it.")
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
            raise FileError(f"{shown_path(path)} is not a regular file: nothing was written to it.")
        written = 0
        while written < len(data):  # a regular file takes it all at once; a short write goes on
            written += os.write(descriptor, data[written:])
    finally:
        os.close(descriptor)
    return len(data)


def file_digest(path: Path) -> str:
    """Content-based name: size plus a hash of the first and last MiB (fast even for large files)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
