"""The app as a user runs it, in a real terminal: `tokenstep` inside tmux, keys sent with send-keys,
the screen read back with capture-pane (its text and, with -e, its colours)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
COLUMNS, ROWS = 120, 40
SGR = re.compile(r"\x1b\[([0-9;]*)m")
BARS = "█▉▊▋▌▍▎▏"


class Tmux:
    """One detached tmux session running a command in a terminal of COLUMNS x ROWS."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = f"tokenstep-test-{uuid.uuid4().hex[:8]}"
        exports = [f"{key}={value}" for key, value in env.items()]
        size = ["-x", str(COLUMNS), "-y", str(ROWS)]
        # A detached session may start at 80 x 24 whatever -x and -y say: sized first, then the command
        self.tmux(["-f", "/dev/null", "new-session", "-d", "-s", self.name, *size, "sleep", "600"])
        self.tmux(["resize-window", "-t", self.name, *size])
        # COLUMNS and LINES would fix the app's size whatever the terminal's (one reaches the pane here)
        self.tmux(["respawn-pane", "-k", "-t", self.name, "env", "-u", "COLUMNS", "-u", "LINES", *exports, *command])

    def tmux(self, args: list[str]) -> str:
        """A tmux command on a server of this test's own (-L), not the user's."""
        return subprocess.run(["tmux", "-L", self.name, *args], check=True, capture_output=True, text=True).stdout

    def screen(self, colours: bool = False) -> str:
        return self.tmux(["capture-pane", "-p", *(["-e"] if colours else []), "-t", self.name])

    def wait_for(self, text: str, seconds: float = 90) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never showed; the screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self.tmux(["send-keys", "-t", self.name, *keys])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True)


def cells(line: str) -> list[tuple[str, dict[str, str]]]:
    """Each character of a `capture-pane -e` line with the SGR state it is drawn in: its foreground
    (`fg`: a 256-colour number or an ANSI code) and whether it is bold."""
    state: dict[str, str] = {}
    drawn = []
    for part in re.split(r"(\x1b\[[0-9;]*m)", line):
        match = SGR.fullmatch(part)
        if match is None:
            drawn += [(character, dict(state)) for character in part]
            continue
        codes = match[1].split(";") if match[1] else ["0"]
        while codes:
            code = codes.pop(0)
            if code == "0":
                state.clear()
            elif code == "1":
                state["bold"] = "1"
            elif code == "22":
                state.pop("bold", None)
            elif code == "39":
                state.pop("fg", None)
            elif code == "38" and codes[:1] == ["5"]:
                state["fg"] = codes[1]
                del codes[:2]
            elif code == "48" and codes[:1] == ["5"]:
                del codes[:2]
            elif code.isdigit() and (30 <= int(code) <= 37 or 90 <= int(code) <= 97):
                state["fg"] = code
    return drawn


def style_at(screen: str, text: str, after: str = "") -> dict[str, str]:
    """The style of the first character of `text`, on the first line holding `after` and `text`."""
    for line in screen.splitlines():
        drawn = cells(line)
        plain = "".join(character for character, _ in drawn)
        if after in plain and text in plain[plain.find(after) :]:
            return drawn[plain.find(text, plain.find(after))][1]
    raise AssertionError(f"{text!r} is not on the screen")


def bars_of_a_row(screen: str) -> list[dict[str, str]]:
    """The styles of the two bars (the model's, the strategy's) of a candidate row below the first
    (which is highlighted), in the candidate panel (the box after the text's)."""
    for line in screen.splitlines()[1:]:
        plain = SGR.sub("", line)
        if not re.search(r"││\s+([2-9]|10) ", plain):
            continue
        row = cells(line)[plain.rindex("││") :]
        bars = [style for character, style in row if character in BARS]
        if len(bars) == 2:
            return bars
    raise AssertionError(f"no row below the first has both bars:\n{SGR.sub('', screen)}")


@pytest.fixture
def app_in_tmux(tiny_model_dir, tmp_path):
    running: list[Tmux] = []

    def start(*options: str) -> Tmux:
        tokenstep = Path(sys.executable).with_name("tokenstep")
        command = [str(tokenstep)] if tokenstep.is_file() else [sys.executable, "-m", "tui.cli"]
        env = {
            "HF_HUB_OFFLINE": "1",
            "TOKENSTEP_DATA": str(tmp_path / "data"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "TERM": "xterm-256color",
            "PATH": os.environ.get("PATH", ""),
        }
        session = ["--session", str(tmp_path / "session.json")]
        tmux = Tmux([*command, "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", *session, *options], env)
        running.append(tmux)
        return tmux

    yield start
    for tmux in running:
        tmux.close()


def test_the_chain_in_the_order_given_shows_in_the_panel_and_the_chain_view(app_in_tmux):
    tmux = app_in_tmux("--strategy", "sample", "--top-k", "7", "--min-p", "0.001", "--samplers", "top_k;min_p")
    screen = tmux.wait_for("kept 7 of")
    assert "model: as it is · strategy: after the chain" in screen
    drawn = tmux.screen(colours=True)
    number, words = style_at(drawn, "7 of", "kept"), style_at(drawn, "kept")
    model_bar, strategy_bar = bars_of_a_row(drawn)
    assert number.get("bold") and number["fg"] == strategy_bar["fg"] != model_bar["fg"] != words.get("fg")
    tmux.keys("w")
    screen = tmux.wait_for("of the mass ")
    header = next(line for line in screen.splitlines() if "model" in line and "top-k" in line)
    assert header.index("top-k") < header.index("min-p")  # the chain's order, as --samplers gave it
    assert re.search(r"kept\s+400\s+7\s+7\b", screen), screen  # of the tiny model's 400, top-k keeps 7, min-p all 7
    tmux.keys("q")


def test_futures_chart_their_outcomes_in_the_terminal_and_survive_a_kill_9(app_in_tmux, tmp_path):
    import signal

    from decoding.records import session_file

    tmux = app_in_tmux("--strategy", "sample", "--top-k", "30")
    tmux.wait_for("logprob")
    tmux.keys("F")
    tmux.wait_for("how many")
    tmux.keys("Enter")
    screen = tmux.wait_for("kept as branches of the tree")
    assert "outcomes of 12 futures" in screen and "sampled share" in screen and "model's probability" in screen
    drawn = tmux.screen(colours=True)
    bar_colours = {style.get("fg") for line in drawn.splitlines() for character, style in cells(line) if character == "█"}
    assert len(bar_colours - {None}) >= 2  # the shares' bars and the model's, each in its own colour
    pid = int(tmux.tmux(["display", "-p", "-t", tmux.name, "#{pane_pid}"]).strip())
    os.kill(pid, signal.SIGKILL)  # no goodbye: what the file holds is what was written as the futures came
    tree = session_file.load(tmp_path / "session.json").tree
    leaves = [node for node in tree.nodes.values() if node.token is not None and not node.children]
    assert len(leaves) >= 10 and all(len(tree.path(leaf.id)) == 1 + 16 for leaf in leaves)
