"""The server engine against real servers on 127.0.0.1: llama.cpp's llama-server serving the embedded
GGUF, and vLLM (CPU) serving its converted copy; agreement with the in-process engines and generate()."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest
import torch

from decoding.core.errors import LoadError, TokenstepError
from decoding.core.settings import Strategy
from decoding.engines.embedded import embedded_gguf
from decoding.engines.hf.load import converted_gguf
from decoding.engines.registry import LoadOptions, load_engine
from decoding.explorer.explorer import Explorer
from decoding.records.trace import trace_record
from decoding.search.second import SecondModel, check_same_tokenizer
from decoding.search.session import Session
from tests import servers
from tests.test_hostile import run_cli
from tests.test_positions import llama_fed_one_at_a_time

pytestmark = pytest.mark.server
PROMPT = "Transformers are the"


@pytest.fixture(scope="module")
def llama_server_url():
    binary = os.environ.get("LLAMA_SERVER")
    if not binary:
        pytest.skip("$LLAMA_SERVER is not set: `make test` builds llama-server and sets it")
    from decoding.engines.llama.engine import default_threads

    port = servers.free_port()
    command = servers.llama_server_command(binary, embedded_gguf(), port, default_threads())
    with servers.running(command, f"http://127.0.0.1:{port}", "llama-server", 120) as url:
        yield url


@pytest.fixture(scope="session")
def vllm_url():
    python = os.environ.get("VLLM_PYTHON")
    if not python:
        pytest.skip("$VLLM_PYTHON is not set: `make test` makes vLLM's environment and sets it")
    port = servers.free_port()
    command = servers.vllm_command(python, converted_gguf(embedded_gguf()), port)
    with servers.running(command, f"http://127.0.0.1:{port}", "vllm", 600, servers.VLLM_ENV) as url:
        yield url


def server_engine(url: str, top: int = 20):
    return load_engine(LoadOptions(engine="server", url=url, server_top=top))


def greedy(engine, steps: int = 32) -> Session:
    session = Session(engine)
    session.reset(PROMPT)
    for _ in range(steps):
        session.step()
    return session


def top10(session: Session) -> dict[int, float]:
    return {c.token_id: c.prob for c in session.distribution.candidates}


# --- llama-server ---------------------------------------------------------------------------------


def test_llama_server_steps_the_in_process_engines_path_with_its_probabilities(llama_server_url):
    served = server_engine(llama_server_url)
    assert served.dialect.name == "llama.cpp" and "llama.cpp" in served.device
    ours, theirs = Session(served), Session(load_engine(LoadOptions(engine="llama")))
    for session in (ours, theirs):
        session.reset(PROMPT)
    assert ours.prompt_ids == theirs.prompt_ids
    for _ in range(32):
        a, b = top10(ours), top10(theirs)
        shared = a.keys() & b.keys()  # near-ties may trade places at the tenth row
        assert len(shared) >= 9 and max(abs(a[t] - b[t]) for t in shared) <= 1e-3
        ours.step()
        theirs.step()
    assert ours.generated_ids == theirs.generated_ids
    assert ours.text == theirs.text


def test_llama_server_undo_sends_no_request_and_a_forced_token_outside_the_n_gets_its_probability(llama_server_url):
    served = server_engine(llama_server_url, top=10)
    local = Session(load_engine(LoadOptions(engine="llama")))
    session = Session(served)
    for s in (session, local):
        s.reset(PROMPT)
        s.step()
    before = session.distribution
    outside = int(torch.argsort(local.next.scores.values, descending=True)[40])
    session.force(outside)
    local.force(outside)
    assert session.path[-1].logprob == pytest.approx(local.path[-1].logprob, abs=1e-3) and session.path[-1].rank is None
    requests = []
    post = served.http.post
    served.http.post = lambda *args: requests.append(args) or post(*args)
    session.undo()
    assert requests == [] and session.distribution == before


@pytest.mark.embedded
def test_llama_server_reads_every_token_as_the_local_engines_do(llama_server_url, embedded_engine):
    """Its /detokenize writes a partial UTF-8 character as U+FFFD (token 111 read as b'\\xef\\xbf\\xbd');
    the bytes come from /tokenize of the ids with their pieces."""
    pytest.importorskip("llama_cpp")
    served, llama = server_engine(llama_server_url), load_engine(LoadOptions(engine="llama"))
    ids = range(embedded_engine.vocab_size)
    assert served.vocab_size == embedded_engine.vocab_size == llama.vocab_size
    assert (
        [served.token_bytes(i) for i in ids]
        == [embedded_engine.token_bytes(i) for i in ids]
        == [llama.token_bytes(i) for i in ids]
    )
    assert served.token_bytes(111) == b"\xa1"
    check_same_tokenizer(embedded_engine, served, "transformers", "llama-server")


def test_llama_server_gives_a_token_it_would_hold_back_its_true_log_probability(llama_server_url):
    """A token ending in a character's first bytes (0xE0: three bytes to come) is held back by
    llama-server, forced, with its log-probability: the whole distribution tells it instead."""
    pytest.importorskip("llama_cpp")
    served, local = Session(server_engine(llama_server_url, top=5)), Session(load_engine(LoadOptions(engine="llama")))
    for session in (served, local):
        session.reset(PROMPT)
    logprobs = torch.log_softmax(local.next.scores.values, -1)
    lead, plain = 171, int(torch.argsort(logprobs, descending=True)[200])
    assert served.engine.token_bytes(lead) == b"\xe0"
    for token in (lead, plain):
        assert served.engine.logprob_of(token) == pytest.approx(float(logprobs[token]), abs=1e-3)


@pytest.mark.embedded
def test_llama_server_is_the_second_model_of_the_transformers_engine(llama_server_url, embedded_engine):
    pytest.importorskip("llama_cpp")
    explorer = Explorer(embedded_engine, choices=10, max_new_tokens=16)
    explorer.add_second(SecondModel(server_engine(llama_server_url), "llama-server"), "first", "second")
    explorer.new_prompt(PROMPT)
    for pick in (0, 0, 3, 0, 1, 0):
        explorer.force(explorer.session.distribution.candidates[pick].token_id)
    explorer.catch_up()
    second = explorer.view().snapshot.second
    assert second is not None and second.note == "" and all(pair is not None for pair in second.path)
    ids = explorer.session.ids
    local = llama_fed_one_at_a_time(ids)  # llama.cpp in-process, fed as the second model is: a token at a time
    start = len(explorer.session.prompt_ids)
    for index, (token, pair) in enumerate(zip(explorer.session.path, second.path), start=start):
        assert pair.second.logprob == pytest.approx(float(local[index - 1, token.token_id]), abs=1e-3)


@pytest.mark.embedded
async def test_the_app_takes_llama_server_as_the_second_model(llama_server_url):
    from tests.test_app import SIZE, settle
    from tui.app import TokenstepApp

    app = TokenstepApp(prompt=PROMPT, look_ahead=0, second_options=LoadOptions(engine="server", url=llama_server_url))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=6000)
        await pilot.press("space", "space")
        await settle(pilot, rounds=6000)
        status = str(app.query_one("#status").content)
        assert "second model Δlogp=" in status and "left out" not in status


@pytest.mark.embedded
def test_diff_reads_a_path_on_llama_server_and_a_server_trace_on_local_engines(llama_server_url, tmp_path):
    pytest.importorskip("llama_cpp")
    local_trace, server_trace = tmp_path / "local.json", tmp_path / "server.json"
    code, out, err = run_cli("trace", PROMPT, "--steps", "5", "--picks", "0,2", "--format", "json")
    assert code == 0, err
    local_trace.write_text(out)
    code, out, err = run_cli("trace", PROMPT, "--steps", "5", "--engine", "server", "--url", llama_server_url, "--format", "json")
    assert code == 0, err
    server_trace.write_text(out)
    for trace, engine in (
        (local_trace, ["--engine", "server", "--url", llama_server_url]),
        (server_trace, ["--engine", "llama"]),
        (server_trace, ["--engine", "transformers"]),
    ):
        code, out, err = run_cli("diff", str(trace), *engine, "--format", "json")
        assert code == 0, err
        record = json.loads(out)
        assert record["note"] == "" and len(record["tokens"]) == 3 + 5  # every token after the first, followed
        # (a prompt token outside a server's top N has no log-probability there; a path token is asked for)
        differences = [abs(row["difference"]) for row in record["tokens"] if row["part"] == "path"]
        assert max(differences) < 0.2  # one GGUF, its float32 copy (None would not compare)


SERVED_CHAIN = dict(
    kind="sample",
    samplers="penalties;dry;top_k;min_p;temperature",
    presence_penalty=0.6,
    frequency_penalty=0.3,
    dry_multiplier=0.8,
    dry_allowed_length=1,
    top_k=12,
    min_p=0.03,
    temperature=0.7,
    seed=5,
)
CHAIN_PROMPT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"


def test_llama_server_shows_its_own_chain_beside_tokenstep_s_and_they_agree(llama_server_url):
    """The server's probabilities after its own chain (post_sampling_probs) for the same settings,
    beside tokenstep's chain run on the server's top 60: the same survivors and probabilities, as
    the top 60 cover every token the chain keeps (penalties only lower a score; top-k keeps 12)."""
    session = Session(server_engine(llama_server_url, top=60), Strategy(**SERVED_CHAIN))
    session.reset(CHAIN_PROMPT)
    compared = 0
    for _ in range(12):
        panel = session.distribution
        assert panel.server.startswith("llama-server, after its own chain")
        for candidate in panel.candidates:
            assert candidate.server_prob == pytest.approx(candidate.processed_prob, abs=1e-4), candidate
            compared += candidate.processed_prob > 0
        session.step()
    assert compared >= 24
    record = trace_record(session)
    assert {"server_prob"} <= set(record["steps"][0]["candidates"][0]) and "server_chain" in record["steps"][0]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (dict(epsilon_cutoff=0.001), "llama-server's chain has no epsilon cutoff"),
        (dict(mirostat=2), "restarts mirostat's mu at every request"),
        (dict(xtc_probability=0.5), "XTC's coin is the server's own"),
        (dict(repetition_penalty=1.2, presence_penalty=0.5), "--repeat-last-n -1"),
    ],
)
def test_a_chain_the_server_cannot_run_as_tokenstep_does_gets_one_line_and_no_column(llama_server_url, settings, said):
    session = Session(server_engine(llama_server_url), Strategy(kind="sample", top_k=20, **settings))
    session.reset(PROMPT)
    panel = session.distribution
    assert said in panel.server and all(c.server_prob is None for c in panel.candidates)


async def test_the_app_draws_the_servers_own_chain_in_a_column_of_its_own(llama_server_url):
    from rich.color import Color

    from tests.test_app import SIZE, settle
    from tests.test_app_drawn import rows_of
    from tui.app import TokenstepApp
    from tui.widgets.candidates import CandidatePanel

    app = TokenstepApp(
        LoadOptions(engine="server", url=llama_server_url, server_top=60), prompt=CHAIN_PROMPT, strategy=Strategy(**SERVED_CHAIN)
    )
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=3000)
        header, *rows = rows_of(app, app.query_one(CandidatePanel))
        assert header.text.split() == ["#", "token", "model", "strategy", "served", "logprob"]
        candidates = app.snapshot.distribution.candidates
        row = next(i for i, c in enumerate(candidates) if i and not c.removed)  # the first row is highlighted
        shown = f"{100 * candidates[row].server_prob:.2f}%"
        yellow = Color.from_triplet(app.ansi_theme.ansi_colors[3])
        assert rows[row].colours(rows[row].text.rfind(shown), shown) == {yellow}
        rest = rows[len(candidates) :]
        line = next(row for row in rest if row.text.startswith("server:"))
        assert "llama-server, after its own chain" in line.text


def test_futures_on_llama_server_go_out_as_concurrent_requests_and_become_branches(llama_server_url):
    explorer = Explorer(server_engine(llama_server_url), Strategy(kind="sample", seed=2, top_k=20))
    explorer.new_prompt(PROMPT)
    run = explorer.futures(4, 5, r"^\s*(\w+)")
    assert [len(future.tokens) for future in run.futures] == [5, 5, 5, 5]
    assert len({future.ids for future in run.futures}) > 1
    for future in run.futures:  # each token is one the server scored, and the branch holds it
        assert all(token.logprob <= 0 and token.rank is not None for token in future.tokens)
        tree = explorer.session.tree
        assert [node.token.token_id for node in tree.path(future.node)[1:]] == list(future.ids)
    assert sum(outcome.count for outcome in run.outcomes) == 4


def test_leave_one_out_on_llama_server_is_what_the_local_engine_gives(llama_server_url):
    """The shortened contexts go out as concurrent requests; the same weights in process agree."""
    from decoding.search.attribution import attribute

    engine, local = server_engine(llama_server_url), load_engine(LoadOptions(engine="llama"))
    ids = engine.encode("The capital of France is the city of")
    target = engine.encode_piece(" Paris")[0]
    served = attribute(engine, ids, target, "loo").values
    # llama-server batches the concurrent requests in its slots: its logits differ from one-by-one by ~3 %
    assert served == pytest.approx(attribute(local, ids, target, "loo").values, rel=0.05, abs=0.02)


# --- vLLM ------------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_vllm_steps_generates_greedy_path_with_its_probabilities(vllm_url, embedded_engine):
    served = server_engine(vllm_url, top=20)
    assert served.dialect.name == "vLLM" and served.model_id == "smollm2"
    ours, theirs = Session(served), Session(embedded_engine)
    for session in (ours, theirs):
        session.reset(PROMPT)
    assert ours.prompt_ids == theirs.prompt_ids
    for _ in range(32):
        a, b = top10(ours), top10(theirs)
        assert list(a) == list(b) and max(abs(a[t] - b[t]) for t in a) <= 1e-4
        ours.step()
        theirs.step()
    ids = torch.tensor([ours.prompt_ids])
    expected = embedded_engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    assert ours.generated_ids == theirs.generated_ids == expected[0, ids.shape[1] :].tolist()


def test_on_vllm_the_chain_runs_on_the_top_n_and_the_panel_says_it_is_approximate(vllm_url):
    from tui.widgets.candidates import chain_strip

    session = Session(server_engine(vllm_url, top=20), Strategy(kind="sample", top_k=5, temperature=0.8))
    session.reset(PROMPT)
    panel = session.distribution
    assert panel.server == "" and all(c.server_prob is None for c in panel.candidates)  # vLLM says nothing after its chain
    strip = chain_strip(panel)
    assert "kept 5 of the 20 returned" in strip.plain
    line = "approximate: the chain ran on the 20 tokens the server returned"
    assert line in strip.plain and strip.spans[-1].style == "yellow"


@pytest.mark.embedded
def test_vllm_gives_a_token_outside_the_n_its_true_log_probability(vllm_url, embedded_engine):
    served, local = Session(server_engine(vllm_url, top=5)), Session(embedded_engine)
    for session in (served, local):
        session.reset(PROMPT)
    outside = int(torch.argsort(local.next.scores.values, descending=True)[100])
    served.force(outside)
    local.force(outside)
    assert served.path[-1].logprob == pytest.approx(local.path[-1].logprob, abs=1e-4)
    assert served.path[-1].rank is None and local.path[-1].rank == 100


@pytest.mark.embedded
def test_vllm_beam_search_with_n_at_least_2b_equals_generate(vllm_url, embedded_engine):
    explorer = Explorer(server_engine(vllm_url, top=10), Strategy(kind="beam", num_beams=3), max_new_tokens=8)
    explorer.new_prompt(PROMPT)
    while not explorer.beam.ended:
        explorer.step()
    best = explorer.beam.snapshot().best
    ids = torch.tensor([explorer.session.prompt_ids])
    out = embedded_engine.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        num_beams=3,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert list(best.token_ids) == out.sequences[0, ids.shape[1] :].tolist()
    assert best.penalised == pytest.approx(float(out.sequences_scores[0]), abs=1e-3)


# --- what goes wrong is one line -------------------------------------------------------------------


def test_a_server_that_is_down_or_speaks_another_dialect_is_one_clear_line():
    port = servers.free_port()
    with pytest.raises(LoadError, match="cannot be reached.*is the server running"):
        server_engine(f"http://127.0.0.1:{port}")
    with pytest.raises(LoadError, match="--url"):
        LoadOptions(engine="server")
    with pytest.raises(LoadError, match="give the server's address"):
        server_engine("ftp://example")

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  http.server's name
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LoadError, match="not as vLLM, SGLang or llama.cpp"):
            server_engine(f"http://127.0.0.1:{server.server_address[1]}/v1")
    finally:
        server.shutdown()


def test_a_server_that_stops_answering_leaves_the_path_and_the_step_can_be_retried(llama_server_url, monkeypatch):
    import decoding.engines.server.engine

    served = server_engine(llama_server_url)
    session = Session(served)
    session.reset(PROMPT)
    session.step()
    path = session.path
    monkeypatch.setattr(served.http, "base", "http://127.0.0.1:9")  # for the message
    real = served.http.ask

    def down(*args, **kwargs):
        raise decoding.engines.server.engine.ServerError("http://127.0.0.1:9 cannot be reached (refused): is the server running?")

    served.http.ask = down
    with pytest.raises(TokenstepError, match="cannot be reached"):
        session.step()
    assert session.path == path and served.cached_length == len(session.ids)
    served.http.ask = real
    session.step()  # retried
    assert len(session.path) == 2


async def test_the_app_steps_undoes_and_picks_ahead_through_a_server(llama_server_url):
    from tests.test_app import SIZE, panel_ids, settle
    from tui.app import TokenstepApp

    app = TokenstepApp(LoadOptions(engine="server", url=llama_server_url), prompt=PROMPT, look_ahead=3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=3000)
        assert "llama.cpp" in str(app.query_one("#status").content)
        first = panel_ids(app)
        await pilot.press("space", "space", "backspace")
        await settle(pilot, rounds=3000)
        assert len(app.snapshot.path) == 1
        engine = app.session.engine
        third = panel_ids(app)[2]
        assert third in app.session.looked_ahead  # asked while the person read
        app.runner.look_ahead = 0  # nothing more ahead: a request now would be the pick's own
        requests = []
        post = engine.http.post
        engine.http.post = lambda *args: requests.append(args) or post(*args)
        await pilot.press("3")
        await settle(pilot, rounds=3000)
        assert app.snapshot.path[-1].token_id == third and requests == [] and first
