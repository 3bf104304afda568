"""Every reply a server sends is hostile until checked: a reply that does not fit is one line naming the
server and the field (exit status 2), the path is kept and the step can be tried again; every wait has
a deadline, and quitting never waits on one.

Property-based (hypothesis) over the reply validator and the request inputs, and end to end against
real HTTP servers on 127.0.0.1 that misbehave on purpose (tests/servers.py), started here, stopped after.
"""

from __future__ import annotations

import json
import math
import os
import pty
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoding.core.errors import LoadError, TokenstepError
from decoding.engines.registry import LoadOptions, load_engine, switched_model
from decoding.engines.server import reply
from decoding.engines.server.http import REQUEST_SECONDS, SECONDS_VARIABLE, Http, ServerError, _reply, server_address
from decoding.search.session import Session
from tests import servers
from tests.servers import ByteServer
from tests.test_hostile import assert_terminal_safe, run_cli, screen_bytes

WHERE = "http://127.0.0.1:1/completion"
V = 300  # the vocabulary's size the validator is given

# --- the reply validator, over any JSON --------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, V - 1, V, 2**63, 2**70, -(2**70), 1e308, -1e308, 5e-324, -0.0]),
)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12))
JSON = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
IDS = st.one_of(st.integers(min_value=0, max_value=V - 1), LEAVES)
LOGPROBS = st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), LEAVES)
KEYS = st.one_of(
    st.integers(min_value=0, max_value=V - 1).map(lambda i: f"token_id:{i}"),
    st.sampled_from(["token_id:-1", "token_id:abc", "token_id", "123", "token_id:1:2", "token_id:٣", f"token_id:{2**70}"]),
    st.text(max_size=12),
)


def llama_shaped(entries):
    return {"completion_probabilities": [{"top_logprobs": entries}]}


LLAMA_TOPS = st.one_of(
    JSON,
    st.lists(st.fixed_dictionaries({"id": IDS, "logprob": LOGPROBS}), max_size=6).map(llama_shaped),
)
VLLM_TOPS = st.one_of(
    JSON,
    st.dictionaries(KEYS, LOGPROBS, max_size=6).map(lambda entries: {"choices": [{"logprobs": {"top_logprobs": [entries]}}]}),
)
SGLANG_TOPS = st.one_of(
    JSON,
    st.lists(st.lists(st.one_of(LOGPROBS, IDS), min_size=0, max_size=3), max_size=6).map(
        lambda entries: {"meta_info": {"output_top_logprobs": [entries]}}
    ),
)


def assert_one_line_naming_the_server(error: ServerError) -> None:
    said = str(error)
    assert WHERE in said and "\n" not in said and len(said) < 600


def assert_usable_top(ids: list[int], logprobs: list[float], n: int) -> None:
    """What every accepted top N holds: ids within the vocabulary, once each; finite log-probabilities
    at most 0, best first, adding up to at most 1."""
    assert 0 < len(ids) == len(logprobs) <= n and len(set(ids)) == len(ids)
    assert all(type(token) is int and 0 <= token < V for token in ids)
    assert all(math.isfinite(value) and reply.LOWEST_LOGPROB <= value <= 0 for value in logprobs)
    assert logprobs == sorted(logprobs, reverse=True)
    assert math.fsum(math.exp(value) for value in logprobs) <= 1 + reply.PROBABILITY_SLACK


@settings(max_examples=400, deadline=None)
@given(answer=LLAMA_TOPS, n=st.integers(min_value=1, max_value=8))
def test_a_llama_cpp_top_n_is_used_only_when_it_can_be_trusted(answer, n):
    try:
        ids, logprobs, _ = reply.llama_top(answer, V, n, WHERE)
    except ServerError as error:
        assert_one_line_naming_the_server(error)
    else:
        assert_usable_top(ids, logprobs, n)


@settings(max_examples=400, deadline=None)
@given(answer=VLLM_TOPS, n=st.integers(min_value=1, max_value=8))
def test_a_vllm_top_n_is_used_only_when_it_can_be_trusted(answer, n):
    try:
        ids, logprobs = reply.vllm_top(answer, V, n, WHERE)
    except ServerError as error:
        assert_one_line_naming_the_server(error)
    else:
        assert_usable_top(ids, logprobs, n)


@settings(max_examples=300, deadline=None)
@given(answer=SGLANG_TOPS, n=st.integers(min_value=1, max_value=8))
def test_an_sglang_top_n_is_used_only_when_it_can_be_trusted(answer, n):
    try:
        ids, logprobs = reply.sglang_top(answer, V, n, WHERE)
    except ServerError as error:
        assert_one_line_naming_the_server(error)
    else:
        assert_usable_top(ids, logprobs, n)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.integers(min_value=0, max_value=V - 1), st.floats(min_value=-50, max_value=0)),
        min_size=1,
        max_size=8,
        unique_by=lambda pair: pair[0],
    )
)
def test_a_top_n_that_fits_is_taken_whole(entries):
    """The checks refuse only what is wrong: distinct ids with probabilities adding up to at most 1 are taken."""
    total = sum(math.exp(logprob) for _, logprob in entries)
    entries = [(token, logprob - math.log(total) - 1e-9 if total > 1 else logprob) for token, logprob in entries]
    answer = llama_shaped([{"id": token, "logprob": logprob} for token, logprob in entries])
    ids, logprobs, _ = reply.llama_top(answer, V, len(entries), WHERE)
    assert sorted(ids) == sorted(token for token, _ in entries)
    assert dict(zip(ids, logprobs)) == pytest.approx(dict(entries))


@settings(max_examples=300, deadline=None)
@given(answer=JSON, token=st.integers(min_value=0, max_value=V - 1))
def test_one_tokens_log_probability_tokenized_ids_texts_and_pieces_are_checked(answer, token):
    for read in (
        lambda: reply.llama_forced(answer, V, token, WHERE),
        lambda: reply.token_ids(answer, V, WHERE),
        lambda: reply.text(answer, reply.LLAMA_TEXT, WHERE),
        lambda: reply.pieces(answer, V, [token], WHERE),
        lambda: reply.checked(answer, reply.LLAMA_PROPS, WHERE),
        lambda: reply.checked(answer, reply.MODELS, WHERE),
    ):
        try:
            value = read()
        except ServerError as error:
            assert_one_line_naming_the_server(error)
            continue
        if isinstance(value, float):
            assert math.isfinite(value) and value <= 0
        elif isinstance(value, list):
            assert all(type(item) is bytes or (type(item) is int and 0 <= item < V) for item in value)
        elif isinstance(value, str):
            pass
        else:
            assert value is None or isinstance(value, dict)


@pytest.mark.parametrize(
    "entries, said",
    [
        ([{"id": -1, "logprob": -0.1}], "expected a whole number from 0 to 299, found -1"),
        ([{"id": 2**70, "logprob": -0.1}], "found 1180591620717411303424"),
        ([{"id": V, "logprob": -0.1}], "to 299, found 300"),
        ([{"id": 1, "logprob": math.nan}], "logprob: expected a number <= 0.001, found nan"),
        ([{"id": 1, "logprob": math.inf}], "found inf"),
        ([{"id": 1, "logprob": -math.inf}], "found -inf"),
        ([{"id": 1, "logprob": "-0.5"}], "found '-0.5'"),
        ([{"id": 1, "logprob": None}], "found None"),
        ([], "the top log-probabilities are an empty list"),
        ([{"id": 1, "logprob": -0.1}, {"id": 1, "logprob": -0.2}], "name token 1 more than once"),
        ([{"id": 1, "logprob": -0.1}, {"id": 2, "logprob": -0.2}], "add up to a probability of 1.72"),
    ],
)
def test_each_lie_in_a_top_n_is_named(entries, said):
    with pytest.raises(ServerError, match="answered what tokenstep cannot use") as refused:
        reply.llama_top(llama_shaped(entries), V, 5, WHERE)
    assert said in str(refused.value)


def test_a_negative_id_is_never_read_as_another_token():
    """id -1 used to index the vocabulary from its end: shown as token 255 'ÿ'."""
    with pytest.raises(ServerError, match=r"top_logprobs\[0\]\.id"):
        reply.llama_top(llama_shaped([{"id": -1, "logprob": -0.01}]), 256, 5, WHERE)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | JSON.map(lambda value: json.dumps(value).encode()))
def test_any_body_is_read_as_json_or_as_not_json(body):
    answer = _reply(200, body)
    assert answer.value is None or json.dumps(answer.value) is not None
    assert isinstance(answer.text, str)


def test_json_nested_beyond_any_reply_is_not_json():
    assert _reply(200, b"[" * 100_000 + b"]" * 100_000).value is None


# --- request inputs, checked before any request ------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    url=st.one_of(st.text(max_size=40), st.text(max_size=20).map(lambda tail: "http://127.0.0.1:" + tail)),
    key=st.text(max_size=10),
)
def test_any_address_and_key_are_checked_or_refused_in_one_line(url, key):
    try:
        address = server_address(url, key or None)
    except LoadError as error:
        assert "\n" not in str(error)
        return
    assert address.scheme in ("http", "https") and address.host
    assert address.port is None or 1 <= address.port <= 65535
    assert all("!" <= ch <= "~" for ch in address.base + address.prefix)
    for name, value in address.headers.items():
        value.encode("latin-1")  # what http.client sends; it refuses CR and LF
        assert "\r" not in value and "\n" not in value and name


BAD_URLS = [
    ("http://127.0.0.1:99999", "the port must be a whole number from 1 to 65535"),
    ("http://127.0.0.1:abc", "the port must be a whole number from 1 to 65535"),
    ("http://127.0.0.1:0", "the port must be a whole number"),
    ("http://[::1", "not an IPv6 address"),
    ("http://[zz]:8000", "not an IPv6 address"),
    ("http://127.0.0.1:8000\n/v1", "is U+000A"),
    ("http://127.0.0.1:8000/v1 ", "is U+0020"),
    ("http://usér@127.0.0.1:8000", "is U+00E9"),
    ("http://me:secret@127.0.0.1:8000", "leave the user and password out"),
    ("http://127.0.0.1:8000/?x=1", "without a ?query or #fragment"),
    ("127.0.0.1:8000", "give the server's address"),
]


@pytest.mark.parametrize("url, said", BAD_URLS)
def test_a_bad_url_is_one_line_before_any_request(url, said):
    with ByteServer() as server:
        url = url.replace("127.0.0.1:8000", server.url.removeprefix("http://"))
        code, out, err = run_cli("trace", "abc", "--engine", "server", "--url", url)
        assert code == 2 and said in err and err.count("\n") == 1 and err.startswith("tokenstep: --url")
        assert server.requests == []


@pytest.mark.parametrize(
    "key, said", [("abc\ndef", "character 4 is U+000A"), ("ключ", "character 1 is U+043A"), ("a\x7f", "character 2 is U+007F")]
)
def test_a_key_no_header_can_carry_is_one_line_before_any_request(key, said, monkeypatch):
    with ByteServer() as server:
        code, _, err = run_cli("trace", "abc", "--engine", "server", "--url", server.url, "--api-key", key)
        assert code == 2 and err.startswith("tokenstep: --api-key: ") and said in err and err.count("\n") == 1
        monkeypatch.setenv("TOKENSTEP_API_KEY", key)
        code, _, err = run_cli("trace", "abc", "--engine", "server", "--url", server.url)
        assert code == 2 and err.startswith("tokenstep: $TOKENSTEP_API_KEY: ") and said in err
        code, _, err = run_cli("--engine", "server", "--url", server.url)  # the app: refused before it starts
        assert code == 2 and said in err
        assert server.requests == []


def test_a_deadline_that_is_no_number_is_one_line(monkeypatch):
    for raw in ("soon", "nan", "-1", "0", "inf"):
        monkeypatch.setenv(SECONDS_VARIABLE, raw)
        code, _, err = run_cli("trace", "abc", "--engine", "server", "--url", "http://127.0.0.1:8000")
        assert code == 2 and f"${SECONDS_VARIABLE} must be a number of seconds" in err


# --- garbage replies, end to end ---------------------------------------------------------------------


def completion(entries):
    return lambda body: (
        200,
        json.dumps({"completion_probabilities": [{"id": 97, "logprob": -1.0, "top_logprobs": entries}]}).encode(),
    )


def fixed(status: int, data: bytes):
    return lambda body: (status, data)


GARBAGE = {
    "nan log-probability": ("/completion", fixed(200, b'{"completion_probabilities": [{"top_logprobs": [{"id": 1, "logprob": NaN}]}]}'), "found nan"),
    "infinite log-probability": ("/completion", fixed(200, b'{"completion_probabilities": [{"top_logprobs": [{"id": 1, "logprob": Infinity}]}]}'), "found inf"),
    "string log-probability": ("/completion", completion([{"id": 1, "logprob": "x"}]), "found 'x'"),
    "null log-probability": ("/completion", completion([{"id": 1, "logprob": None}]), "found None"),
    "empty top": ("/completion", completion([]), "empty list"),
    "id beyond the vocabulary": ("/completion", completion([{"id": 257, "logprob": -0.1}]), "found 257"),
    "id of 2**70": ("/completion", completion([{"id": 2**70, "logprob": -0.1}]), "found 1180591620717411303424"),
    "negative id": ("/completion", completion([{"id": -1, "logprob": -0.1}]), "found -1"),
    "no completion": ("/completion", fixed(200, b'{"completion_probabilities": []}'), "expected at least one entry"),
    "not JSON": ("/completion", fixed(200, b"<html>oops</html>"), "not JSON: <html>oops</html>"),
    "nested JSON": ("/completion", fixed(200, b"[" * 50_000 + b"]" * 50_000), "not JSON"),
    "a huge body": ("/completion", fixed(200, b" " * (33 << 20)), "more than tokenstep reads"),
    "an error with escapes": ("/completion", fixed(500, b"\x1b]0;TITLE\x07\x1b[2J boom"), "answered 500"),
    "context a string": ("/props", lambda body: servers._json({"default_generation_settings": {"n_ctx": "4096"}}), "n_ctx: expected a whole number"),
    "context NaN": ("/props", fixed(200, b'{"default_generation_settings": {"n_ctx": NaN}}'), "found nan"),
    "vocabulary of 99,999,999,999,999": ("/v1/models", lambda body: servers._json({"data": [{"id": "m", "meta": {"n_vocab": 99_999_999_999_999}}]}), "n_vocab: expected a whole number from 1 to 4194304"),
    "tokens as strings": ("/tokenize", lambda body: servers._json({"tokens": ["1", "2"]} if isinstance(body["content"], str) else {"tokens": ByteServer.tokenize(body)}), "tokens[0]: expected a whole number"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_replies_are_one_line_naming_the_server_and_exit_2(case):
    path, answer, said = GARBAGE[case]
    with ByteServer() as server:
        server.answers[path] = answer
        code, out, err = run_cli("trace", "abc", "--engine", "server", "--url", server.url, "--steps", "2")
    assert code == 2, err
    assert err.startswith("tokenstep: ") and err.count("\n") == 1 and said in err and server.url in err
    assert "internal error" not in err and "Traceback" not in err
    assert_terminal_safe(err)


def test_a_detokenized_text_that_is_not_a_string_is_refused():
    with pytest.raises(ServerError, match=r"reply.prompt: expected a string, found 7|reply: expected an object"):
        reply.text({"prompt": 7}, reply.OPENAI_TEXT, WHERE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=LLAMA_TOPS)
def test_whatever_a_server_answers_a_step_either_takes_it_or_keeps_the_path(byte_engine, answer):
    server, engine = byte_engine
    session = Session(engine)
    session.reset("ab")
    before = (list(engine.held), session.path)
    server.answers["/completion"] = lambda body: servers._json(answer)
    try:
        session.step()
    except TokenstepError as error:
        assert "\n" not in str(error) and (list(engine.held), session.path) == before
    else:
        assert_usable_top(*_shown(session), n=engine.top)
    finally:
        server.answers.pop("/completion")


def _shown(session):
    candidates = session.distribution.candidates
    return [c.token_id for c in candidates], [c.logprob for c in candidates]


@pytest.fixture(scope="module")
def byte_server():
    with ByteServer() as server:
        yield server


@pytest.fixture(scope="module")
def byte_engine(byte_server):
    return byte_server, load_engine(LoadOptions(engine="server", url=byte_server.url, server_top=5))


# --- the app keeps its path ---------------------------------------------------------------------------


async def test_the_app_keeps_its_path_after_a_garbage_reply_and_the_step_can_be_retried():
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    notes = []
    with ByteServer() as server:
        app = TokenstepApp(LoadOptions(engine="server", url=server.url), prompt="ab", look_ahead=0)
        async with app.run_test(size=SIZE) as pilot:
            app.notify = lambda message, **kwargs: notes.append(message)
            await settle(pilot, rounds=3000)
            await pilot.press("space")
            await settle(pilot, rounds=3000)
            path = app.snapshot.path
            assert [token.token_id for token in path] == [ord("c")]
            server.answers["/completion"] = completion([{"id": -1, "logprob": -0.01}])
            await pilot.press("space")
            await settle(pilot, rounds=3000)
            assert app.snapshot.path == path
            assert any(server.url in note and "top_logprobs[0].id" in note and "found -1" in note for note in notes)
            server.answers.pop("/completion")
            await pilot.press("space")  # tried again
            await settle(pilot, rounds=3000)
            assert [token.token_id for token in app.snapshot.path] == [ord("c"), ord("d")]


async def test_server_text_reaches_the_screen_escaped():
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    with ByteServer() as server:
        props = {
            "default_generation_settings": {"n_ctx": 4096},
            "model_path": "/m/\x1b]0;TITLE\x07\x1b[2J.gguf",
            "build_info": "\x9b31m",
        }
        server.answers["/props"] = lambda body: servers._json(props)
        app = TokenstepApp(LoadOptions(engine="server", url=server.url), prompt="ab", look_ahead=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, rounds=3000)
            assert "\\x1b]0;TITLE" in str(app.query_one("#status").content)
            assert_terminal_safe(screen_bytes(app))


# --- deadlines -------------------------------------------------------------------------------------------


def load_within(url: str, seconds: float) -> tuple[BaseException | None, float]:
    """Load a server engine on a thread of its own (a wait without a deadline fails the test, not hangs it)."""
    outcome: list[BaseException | None] = [None]

    def load() -> None:
        try:
            load_engine(LoadOptions(engine="server", url=url))
        except BaseException as error:
            outcome[0] = error

    start = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return outcome[0], time.monotonic() - start


@pytest.mark.parametrize("behaviour", [servers.silent, servers.trickling(0.3)], ids=["silent", "trickling"])
def test_a_server_that_never_finishes_answering_is_refused_at_the_deadline(behaviour, monkeypatch):
    monkeypatch.setenv(SECONDS_VARIABLE, "1.5")
    with servers.raw_server(behaviour) as url:
        error, took = load_within(url, 10)
    assert isinstance(error, LoadError) and f"{url}/props did not answer within 1.5 s" in str(error)
    assert 1.4 <= took <= 4.0
    assert REQUEST_SECONDS <= 30  # by default too, far from the minutes it was


def test_a_request_in_flight_is_cut_short_at_once_by_interrupt():
    with servers.raw_server(servers.silent) as url:
        http = Http(server_address(url, None))
        outcome: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(outcome, lambda: http.get("/props")), daemon=True)
        thread.start()
        time.sleep(0.3)
        start = time.monotonic()
        http.interrupt()
        thread.join(2)
        assert not thread.is_alive() and time.monotonic() - start < 1
        assert isinstance(outcome[0], ServerError) and "was cancelled" in str(outcome[0])


def waiting_for(release: threading.Event, server: ByteServer):
    """A /completion that answers only once `release` is set."""

    def answer(body: dict):
        release.wait(30)
        return servers._json({"completion_probabilities": [server.completion(body)]})

    return answer


def _capture(outcome: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as error:
        outcome.append(error)


async def test_esc_cuts_a_waiting_step_short_and_keeps_the_path():
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    notes = []
    with ByteServer() as server:
        app = TokenstepApp(LoadOptions(engine="server", url=server.url), prompt="ab", look_ahead=0)
        async with app.run_test(size=SIZE) as pilot:
            app.notify = lambda message, **kwargs: notes.append(message)
            await settle(pilot, rounds=3000)
            release = threading.Event()
            server.answers["/completion"] = waiting_for(release, server)
            await pilot.press("space")
            await pilot.pause(0.3)
            assert app.runner.running is not None
            start = time.monotonic()
            await pilot.press("escape")
            while not app.idle and time.monotonic() - start < 5:
                await pilot.pause(0.02)
            assert time.monotonic() - start < 1.0 and not app.snapshot.path
            assert any("was cancelled" in note for note in notes)
            release.set()
            server.answers.pop("/completion")
            await pilot.press("space")
            await settle(pilot, rounds=3000)
            assert [token.token_id for token in app.snapshot.path] == [ord("c")]


# --- q always quits -------------------------------------------------------------------------------------


def run_app_in_a_terminal(
    args: list[str], tmp_path: Path, ready: str, keys: bytes = b"", waiting=lambda: True, quit: bytes = b"q"
) -> tuple[float, str]:
    """Run `tokenstep ARGS` in a pseudo-terminal until `ready` is on screen, type `keys`, and once it
    is `waiting` (on a server), type `quit`: how long it takes to exit after that."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TERM": "xterm-256color", "TOKENSTEP_DATA": str(tmp_path), "PYTHONPATH": str(root)}
    main, child = pty.openpty()
    os.set_blocking(main, False)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", *args], stdin=child, stdout=child, stderr=child, env=env, cwd=root, close_fds=True
    )
    os.close(child)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        while ready.encode() not in screen:
            assert process.poll() is None, screen.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"{ready!r} never appeared"
            screen += _read(main)
        os.write(main, keys)
        while not waiting():
            assert time.monotonic() < deadline, "it never came to wait on the server"
            screen += _read(main)
        time.sleep(0.3)
        os.write(main, quit)
        start = time.monotonic()
        while process.poll() is None and time.monotonic() - start < 30:
            screen += _read(main)
        return time.monotonic() - start, screen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(main)


def _read(fd: int) -> bytes:
    select.select([fd], [], [], 0.05)
    try:
        return os.read(fd, 65536)
    except (BlockingIOError, OSError):
        return b""


def test_q_quits_at_once_while_loading_waits_on_a_server_that_never_answers(tmp_path):
    with servers.raw_server(servers.silent) as url:
        took, _ = run_app_in_a_terminal(["--engine", "server", "--url", url], tmp_path, "Loading", b"q")
    assert took < 1.5


def test_ctrl_q_quits_at_once_while_a_step_waits_on_the_server(tmp_path):
    release = threading.Event()
    with ByteServer() as server:
        answered = []
        waiting = waiting_for(release, server)

        def hangs_after_loading(body: dict):
            answered.append(body)
            return waiting(body) if len(answered) > 1 else servers._json({"completion_probabilities": [server.completion(body)]})

        server.answers["/completion"] = hangs_after_loading
        try:
            took, _ = run_app_in_a_terminal(
                ["ab", "--engine", "server", "--url", server.url, "--look-ahead", "0"],
                tmp_path,
                "llama.cpp",
                keys=b" ",
                waiting=lambda: len(answered) > 1,
                quit=b"\x11",  # ctrl+q
            )
        finally:
            release.set()
    assert took < 1.5 and len(answered) > 1


# --- the model dialog, and what the command line checks always -----------------------------------------


def test_the_model_dialog_answer_picks_the_engine_it_needs():
    server = LoadOptions(engine="server", url="http://127.0.0.1:1")
    assert switched_model(server, "") == LoadOptions()
    assert switched_model(server, "m.gguf") == LoadOptions(model="m.gguf")
    assert switched_model(LoadOptions(), " http://127.0.0.1:2/v1 ") == LoadOptions(engine="server", url="http://127.0.0.1:2/v1")
    assert switched_model(LoadOptions(engine="llama"), "org/name") == LoadOptions(model="org/name")
    assert switched_model(LoadOptions(engine="llama"), "x.gguf") == LoadOptions(engine="llama", model="x.gguf")
    with pytest.raises(LoadError, match="the port must be"):
        switched_model(server, "http://127.0.0.1:99999")


async def test_after_a_server_fails_the_model_dialog_loads_another_server_or_a_local_model(tiny_model_dir):
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    down = f"http://127.0.0.1:{servers.free_port()}"
    with ByteServer() as server:
        app = TokenstepApp(LoadOptions(engine="server", url=down), prompt="ab", look_ahead=0)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, rounds=3000)
            assert "cannot be reached" in str(app.query_one("#loading-text").content)
            for answer, shown in ((server.url, "llama.cpp"), (str(tiny_model_dir), "transformers")):
                await pilot.press("m")
                await pilot.pause()
                app.screen.query_one("Input").value = answer
                await pilot.press("enter")
                await settle(pilot, rounds=3000)
                assert shown in str(app.query_one("#status").content)


def test_server_top_is_checked_without_a_server_and_the_second_url_is_named(tiny_model_dir):
    code, _, err = run_cli("trace", "abc", "--server-top", "0", "--model", str(tiny_model_dir))
    assert code == 2 and "--server-top must be from 2 to 1000 (got 0)" in err
    code, _, err = run_cli("--second-engine", "server")
    assert code == 2 and "--second-engine server needs --second-url" in err and "--url," not in err


async def test_a_second_model_left_out_is_said_where_it_would_show(tiny_model_dir):
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    with ByteServer() as server:  # a vocabulary of its own: it cannot go along the tiny model's path
        app = TokenstepApp(
            LoadOptions(model=str(tiny_model_dir), device="cpu"),
            prompt="ab",
            look_ahead=0,
            second_options=LoadOptions(engine="server", url=server.url),
        )
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, rounds=3000)
            status = app.query_one("#status")
            lines = [line.text for line in status.render_lines(status.region.reset_offset)]
            assert any("second model left out" in line for line in lines)
