"""The explorer: type a prompt, step token by token, force-pick from the live candidate panel.

The app only renders frozen `Snapshot`s and sends commands. All model work runs, one command at a time
and in the order asked, in a thread worker that posts messages; no widget is touched from that thread.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Input, Label

from decoding.errors import SessionError, TokenstepError
from decoding.files import write_atomically
from decoding.loading import EMBEDDED_NAME, LoadOptions
from decoding.settings import Strategy
from decoding.state import BeamSnapshot, ProcessorReport, Snapshot
from decoding.tokens import escape_controls, one_line
from tui.compare_screen import CompareScreen
from tui.keeper import SessionKeeper
from tui.model_screen import ModelScreen
from tui.settings_screen import Settings, SettingsScreen
from tui.widgets.beams import BeamPanel
from tui.widgets.candidates import CandidatePanel
from tui.widgets.processors import ProcessorPanel
from tui.widgets.spinner import Spinner
from tui.widgets.status import StatusLine, Timing
from tui.widgets.text_view import TextView
from tui.widgets.tree_view import TreePanel

if TYPE_CHECKING:  # torch loads in the worker, after the first paint
    from decoding.beam import BeamSearch
    from decoding.session import Session
    from decoding.session_file import SavedSession
    from decoding.tree import Branch

Clock = Callable[[], float]
PLAY_FRAME_SECONDS = 0.25  # 4 frames a second while playing
SWITCH_INTERVAL_SECONDS = 0.001
COMPARE_NEW_TOKENS = 32  # what each strategy writes in the compare view
ENDED_NOTES = {"eos": "end of sequence: ⌫ takes it back", "context limit": "the context is full: ⌫ takes a token back"}


@dataclass(frozen=True)
class Command:
    """One unit of model work, run on the model thread: `run(session, app, cancelled)`, which may
    return the timing to show and stops early once `cancelled` is set. The screen is sent the new
    state once, when it ends."""

    name: str
    run: Callable[[Session, "TokenstepApp", threading.Event], Timing | None]
    work_ahead: bool = False  # speculative: cancelled by any command a person asks for
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)


class TokenstepApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    AUTO_FOCUS = None  # keys step at once; tab (or a click) goes to the prompt
    TITLE = "tokenstep"
    BINDINGS = [
        Binding("space,right", "step", "Step", id="step", tooltip="One step by the current strategy"),
        Binding("1", "pick(0)", "Pick", key_display="1-9", id="pick.1", tooltip="Force-pick that row"),
        *(Binding(str(n), f"pick({n - 1})", show=False, id=f"pick.{n}") for n in range(2, 10)),
        Binding("up", "highlight(-1)", show=False, id="highlight.up"),
        Binding("down", "highlight(1)", show=False, id="highlight.down"),
        Binding("enter", "pick_highlighted", "Pick highlighted", show=False, id="pick.highlighted"),
        Binding("j", "highlight_beam(1)", "Beam", key_display="j/k", id="beam.down", tooltip="Highlight the next beam"),
        Binding("k", "highlight_beam(-1)", show=False, id="beam.up"),
        Binding("backspace,left", "undo", "Undo", id="undo", tooltip="Take back the last token"),
        Binding("p", "play", "Play", id="play", tooltip="Play or pause"),
        Binding("s", "settings", "Settings", id="settings"),
        Binding("c", "compare", "Compare", id="compare", tooltip="The chapter's strategies side by side from here"),
        Binding("t", "toggle_tree", "Tree", id="tree", tooltip="Every branch walked; enter jumps"),
        Binding("left_square_bracket", "sibling(-1)", show=False, id="sibling.previous"),
        Binding("right_square_bracket", "sibling(1)", show=False, id="sibling.next"),
        Binding("e", "export", "Export", id="export", tooltip="Save the path as JSON, CSV and Markdown traces"),
        Binding("E", "export_tree", show=False, id="export.tree", tooltip="Save the whole tree as JSON"),
        Binding("v", "toggle_whitespace", "Whitespace", show=False, id="whitespace"),
        Binding("w", "toggle_processors", "Processors", show=False, id="processors", tooltip="What each processor did"),
        Binding("m", "choose_model", "Model", show=False, id="model"),
        Binding("escape", "stop", "Stop", id="stop", tooltip="Stop playing and drop queued steps"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    visible_whitespace: reactive[bool] = reactive(False)
    """Show spaces, tabs and newlines in the running text as ␣ ⇥ ↵."""

    # --- messages from the worker threads ---------------------------------------------------------

    class LoadProgress(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Loaded(Message):
        def __init__(self, session: Session, state: TokenstepApp.Updated) -> None:
            super().__init__()
            self.session, self.state = session, state

    class LoadFailed(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Updated(Message):
        """The session changed; only the newest of a burst needs painting. `beam` is the beam search's
        state while the strategy is beam search, else None."""

        def __init__(
            self,
            snapshot: Snapshot,
            timing: Timing | None = None,
            beam: BeamSnapshot | None = None,
            report: ProcessorReport | None = None,
            tree: tuple[Branch, ...] | None = None,
        ) -> None:
            super().__init__()
            self.snapshot, self.timing, self.beam, self.report, self.tree = snapshot, timing, beam, report, tree

        def can_replace(self, message: Message) -> bool:
            # Textual asks the older message whether the newer pending one may stand in for it;
            # it may if it carries its own timing (else the older timing would be lost).
            return isinstance(message, TokenstepApp.Updated) and message.timing is not None

    class CommandFailed(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class CommandDone(Message):
        pass

    class BeamHighlight(Message):
        def __init__(self, rank: int) -> None:
            super().__init__()
            self.rank = rank

    class Notice(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    # --- set-up -----------------------------------------------------------------------------------

    def __init__(
        self,
        load_options: LoadOptions = LoadOptions(),
        strategy: Strategy = Strategy(),
        *,
        prompt: str = "Transformers are the",
        choices: int = 10,
        max_new_tokens: int = 256,
        look_ahead: int = 5,
        export_dir: Path | None = None,
        clock: Clock = time.perf_counter,
        session_path: Path | None = None,
        saved: SavedSession | None = None,
    ) -> None:
        super().__init__()
        self.load_options, self.strategy, self.choices = load_options, strategy, choices
        self.initial_prompt, self.max_new_tokens = prompt, max_new_tokens
        self.look_ahead = look_ahead  # candidates whose next panel is computed while the person reads
        self.export_dir = export_dir or Path.cwd()
        self.clock = clock
        self.session: Session | None = None  # used only on the model thread
        self.beam: BeamSearch | None = None  # likewise: the beam search while the strategy is beam
        self.snapshot: Snapshot | None = None
        self.beam_view: BeamSnapshot | None = None
        self.highlighted_beam = 0
        self.show_processors = False  # the processor view (w); read by the worker to add its report
        self.report: ProcessorReport | None = None
        self.show_tree = False  # the tree panel (t); read by the worker likewise
        self.tree_rows: tuple[Branch, ...] = ()
        self.keeper = SessionKeeper(session_path, saved, lambda text: self.post_message(self.CommandFailed(text)))
        self.timing = Timing()
        self.queue: deque[Command] = deque()
        self.running: Command | None = None
        self._prompts_shown: dict[str, str] = {}  # the prompt box's text -> the prompt it stands for
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()  # the model thread's work
        self.loading = False  # a model is being loaded (its Loaded or LoadFailed message is still to come)

    def compose(self) -> ComposeResult:
        prompt = Input(self._shown_prompt(self.initial_prompt), placeholder="Type a prompt, then enter", id="prompt", select_on_focus=False)
        prompt.border_title = "prompt · tab to edit, enter to run"
        yield prompt
        with Vertical(id="loading"):
            yield Spinner()
            yield Label(Text(escape_controls(f"Loading {self._model_name()}…")), id="loading-text")
        with Horizontal(id="main"):
            yield TextView(id="text")
            yield TreePanel(id="tree")
            yield BeamPanel(id="beams")
            with Vertical(id="side"):
                with VerticalScroll(id="candidates-scroll"):
                    yield CandidatePanel(id="candidates")
                yield ProcessorPanel(id="processors")
        yield StatusLine(Text("loading…"), id="status")
        yield Footer()

    def on_mount(self) -> None:
        # The model thread gives up the GIL for every torch kernel and must take it back after; while
        # the UI thread paints, that wait is up to the switch interval (5 ms by default) each time.
        # 1 ms kept play at 0.93-0.99 of the session's own loop where 5 ms gave 0.82-0.88.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self.query_one("#main").display = False
        self.query_one(BeamPanel).display = False
        self.query_one(ProcessorPanel).display = False
        self.query_one(TreePanel).display = False

    def on_ready(self) -> None:
        # Sent after the first frame is painted: importing torch holds the GIL for a second or more,
        # so started any earlier it would keep the first frame off the screen.
        self._model_thread()
        self.load(self.load_options, Settings(self.strategy, self.choices), self.initial_prompt)

    def on_unmount(self) -> None:
        if self.running is not None:
            self.running.cancelled.set()
        self._inbox.put(None)  # the model thread ends after what it is doing

    @work(thread=True, exclusive=True, group="model", exit_on_error=False, description="the model thread")
    def _model_thread(self) -> None:
        """Every model command, loading included, runs on this one thread for the app's life: torch's
        thread pools and caches belong to the thread that calls it, and a new thread per command ran
        play ~20 % slower (`python benchmarks/run.py app_play`)."""
        while (job := self._inbox.get()) is not None:
            job()

    def _model_name(self) -> str:
        options = self.load_options
        return f"{options.model or EMBEDDED_NAME} ({options.engine}, device {options.device}, dtype {options.dtype})"

    # --- loading ----------------------------------------------------------------------------------

    def load(self, options: LoadOptions, settings: Settings, prompt: str) -> None:
        """Load the model on the model thread, then open the session at `prompt` (or the saved tree)."""
        self.loading = True
        self._inbox.put(partial(self._load, options, settings, prompt))

    def _load(self, options: LoadOptions, settings: Settings, prompt: str) -> None:
        try:
            session = self._load_session(options, settings)
        except TokenstepError as error:
            self.post_message(self.LoadFailed(str(error)))
            return
        except Exception as error:  # a model that breaks transformers: say so, keep the app
            self.post_message(self.LoadFailed(f"The model could not be loaded: {type(error).__name__}: {error}"))
            return
        # The first panel, computed on this thread while it is warm; keys pressed meanwhile wait.
        start = self.clock()
        self.beam = None
        try:
            self.keeper.open(session, prompt)
            self._restart_beam(session)
            self.keeper.start(session)
        except Exception as error:  # a prompt the model cannot take, a session folder that fails: the app still opens
            self.post_message(self.CommandFailed(_said(error)))
        try:
            loaded = self.Loaded(session, self._updated(session, Timing(latency_ms=1000 * (self.clock() - start))))
        except Exception as error:  # never leave the spinner waiting
            self.post_message(self.LoadFailed(f"The model loaded, but its first panel failed: {_said(error)}"))
            return
        self.post_message(loaded)

    def _load_session(self, options: LoadOptions, settings: Settings) -> Session:
        from decoding.loading import collector_paused, load_engine

        with collector_paused():  # torch is imported here, after the first paint
            from decoding.session import Session

            engine = load_engine(options, lambda text: self.post_message(self.LoadProgress(text)))
        return Session(engine, settings.strategy, settings.choices)

    def on_tokenstep_app_load_progress(self, message: LoadProgress) -> None:
        self.query_one("#loading-text", Label).update(Text(escape_controls(message.text + "…")))

    def on_tokenstep_app_loaded(self, message: Loaded) -> None:
        self.loading = False
        self.session = message.session
        engine = message.session.engine
        self.model_label = one_line(f"{_short_model_name(engine.model_id)} · {engine.name} · {engine.device} · {engine.dtype}")
        self.query_one(Spinner).stop()
        self.query_one("#loading").display = False
        self.query_one("#main").display = True
        prompt = self.query_one("#prompt", Input)
        if message.state.snapshot.prompt:
            prompt.value = self._shown_prompt(message.state.snapshot.prompt)  # a reopened session's prompt
        self.on_tokenstep_app_updated(message.state)
        self._next_command(after_work_ahead=False)

    def on_tokenstep_app_load_failed(self, message: LoadFailed) -> None:
        self.loading = False
        self.queue.clear()
        self.query_one(Spinner).stop()
        self.query_one("#loading-text", Label).update(
            Text(escape_controls(message.text) + "\n\nPress m to try another model, or q to quit.", style="bold red")
        )
        self.query_one("#status", StatusLine).update(Text("no model loaded"))

    def action_choose_model(self) -> None:
        def chosen(model: str | None) -> None:
            if model is None:
                return
            try:
                self.load_options = replace(self.load_options, model=model or None)
            except TokenstepError as error:
                self.notify(str(error), severity="error", markup=False)
                return
            self.action_stop()
            self.session = None
            self.keeper.new_file()
            self.query_one("#main").display = False
            self.query_one("#loading").display = True
            self.query_one(Spinner).start()
            self.query_one("#loading-text", Label).update(Text(escape_controls(f"Loading {self._model_name()}…")))
            self.load(self.load_options, Settings(self.strategy, self.choices), self.query_one("#prompt", Input).value)

        self.push_screen(ModelScreen(), chosen)

    # --- the command queue: one model command at a time, in the order asked -----------------------

    def enqueue(self, command: Command) -> None:
        if self.running is not None and self.running.work_ahead:
            self._pause()  # the person's command goes first; the pass in flight finishes
        self.queue.append(command)
        self._pump()

    def _pump(self) -> None:
        if self.running is None and self.queue and self.session is not None:
            self.running = self.queue.popleft()
            self._inbox.put(partial(self._run, self.running))

    def _run(self, command: Command) -> None:
        """On the model thread: one command, then the news for the screen."""
        timing = None
        try:
            timing = command.run(self.session, self, command.cancelled)
        except TokenstepError as error:
            self.post_message(self.CommandFailed(str(error)))
        except Exception as error:  # out of GPU memory and the like: the path is left as it was
            if not command.work_ahead:  # failed work ahead is simply not there when asked for
                self.post_message(self.CommandFailed(f"{command.name} failed: {_said(error)}"))
        try:
            if not command.work_ahead:
                self.keeper.save(self.session)
                self.post_message(self._updated(self.session, timing))
        except Exception as error:
            self.post_message(self.CommandFailed(f"{command.name}: the screen could not be updated: {_said(error)}"))
        finally:
            self.post_message(self.CommandDone())  # always: the next command must never wait forever

    def on_tokenstep_app_command_done(self) -> None:
        finished, self.running = self.running, None
        if finished is not None:  # else a second delivery of the same news
            self._next_command(after_work_ahead=finished.work_ahead)

    def _next_command(self, after_work_ahead: bool) -> None:
        """Run what is queued; with nothing queued, work ahead (once: not again after work ahead)."""
        if not self.queue and not after_work_ahead and self.look_ahead:
            self.queue.append(Command("look ahead", self._work_ahead, work_ahead=True))
        self._pump()

    def on_tokenstep_app_command_failed(self, message: CommandFailed) -> None:
        self.notify(message.text, severity="warning", markup=False)

    def on_tokenstep_app_beam_highlight(self, message: BeamHighlight) -> None:
        self.highlighted_beam = message.rank
        self.refresh_view()

    def on_tokenstep_app_notice(self, message: Notice) -> None:
        self.notify(message.text, markup=False)

    def on_tokenstep_app_updated(self, message: Updated) -> None:
        if (message.beam is None) != (self.beam_view is None):
            self.refresh_bindings()  # the beam keys come and go with beam search
        self.snapshot, self.beam_view, self.report = message.snapshot, message.beam, message.report
        if message.tree is not None:
            self.tree_rows = message.tree
        if message.timing is not None:
            self.timing = message.timing
        self.refresh_view()

    def refresh_view(self) -> None:
        if self.snapshot is None:
            return
        beam = self.beam_view
        processors = self.query_one(ProcessorPanel)
        processors.display = self.show_processors
        if self.show_processors:
            processors.show(self.report, self.snapshot.distribution, beam is not None)
        tree = self.query_one(TreePanel)
        tree.display = self.show_tree
        if self.show_tree:
            tree.show(self.tree_rows, *self.keeper.foreign)
        self.query_one(TextView).display = beam is None and not self.show_tree
        self.query_one(BeamPanel).display = beam is not None and not self.show_tree
        if beam is None:
            self.query_one(TextView).show(self.snapshot, self.visible_whitespace)
            self.query_one(CandidatePanel).show(self.snapshot.distribution, ENDED_NOTES.get(self.snapshot.finished or "", ""))
            self.query_one(StatusLine).show(self.snapshot, self.timing, self.model_label)
            return
        self.highlighted_beam = max(0, min(self.highlighted_beam, len(beam.beams) - 1))
        self.query_one(BeamPanel).show(beam, self.highlighted_beam)
        self.query_one(CandidatePanel).show(beam.candidates[self.highlighted_beam] if beam.candidates else None, "the beam search has ended: ⌫ takes a step back")
        self.query_one(StatusLine).show_beam(beam, self.timing, self.model_label)

    def watch_visible_whitespace(self) -> None:
        self.refresh_view()

    @property
    def idle(self) -> bool:
        """No model work running or waiting (tests and benchmarks wait for this)."""
        return not self.loading and self.running is None and not self.queue

    # --- commands ---------------------------------------------------------------------------------

    def _timed(self, name: str, change: Callable[[Session], object]) -> Command:
        def run(session: Session, app: TokenstepApp, cancelled: threading.Event) -> Timing:
            start = app.clock()
            change(session)
            return Timing(latency_ms=1000 * (app.clock() - start))

        return Command(name, run)

    def _reset_command(self, prompt: str) -> Command:
        def reset(session: Session) -> None:
            session.reset(prompt)
            self._restart_beam(session)

        return self._timed("reset", reset)

    # --- beam search: its own state beside the session's path (model thread only) -----------------

    def _restart_beam(self, session: Session) -> None:
        """Under the beam strategy, a new beam search from the path as it stands; else none."""
        from decoding.beam import BeamSearch

        strategy = session.strategy
        self.beam = None
        if strategy.is_beam and session.prompt_ids:
            room = self.max_new_tokens
            self.beam = BeamSearch(session.engine, strategy, session.ids, max_new_tokens=room, choices=session.choices)

    def _updated(self, session: Session, timing: Timing | None = None) -> Updated:
        """The news for the screen after model work: the path, and the beam search or processor report if shown."""
        beam = self.beam.snapshot() if self.beam is not None else None
        report = session.processor_report() if self.show_processors and beam is None else None
        tree = tuple(session.tree.branches()) if self.show_tree else None
        return self.Updated(session.snapshot(), timing, beam, report, tree)

    def _step(self, session: Session) -> object:
        return self.beam.step() if self.beam is not None else session.step()

    def _undo(self, session: Session) -> object:
        return self.beam.undo() if self.beam is not None else session.undo()

    def _play(self, session: Session, app: TokenstepApp, cancelled: threading.Event) -> Timing | None:
        """Step until the end, the limit or a key; frames go out a few times a second, the last one
        (with the final timing) when the command ends."""
        started, steps, painted = app.clock(), 0, 0.0
        if app.beam is None and len(session.path) >= app.max_new_tokens:
            raise SessionError(f"The path already has {len(session.path)} new tokens, the --max-new-tokens limit.")
        if app.beam is not None and app.beam.ended:
            raise SessionError(f"The beam search has ended ({app.beam.ended}). Undo, or start again.")
        while not cancelled.is_set() and app._can_play_on(session):
            step_start = app.clock()
            app._step(session)
            app.keeper.save(session)  # ~1 ms: a kill loses at most the step in flight
            steps += 1
            now = app.clock()
            if now - painted >= PLAY_FRAME_SECONDS:
                # A few frames a second: painting every token would hold the GIL this thread needs
                # (on 2 cores, play ran at 0.64x the session's own speed when every token was painted).
                timing = Timing(1000 * (now - step_start), steps / (now - started))
                app.post_message(app._updated(session, timing))
                painted = now
        if not steps:
            return None
        now = app.clock()
        return Timing(1000 * (now - step_start), steps / (now - started))

    def _can_play_on(self, session: Session) -> bool:
        if self.beam is not None:
            return not self.beam.ended  # the search stops itself at max_new_tokens
        return not session.finished and len(session.path) < self.max_new_tokens

    def _work_ahead(self, session: Session, app: TokenstepApp, cancelled: threading.Event) -> None:
        """While the person reads: the next panel for the strategy's choice and the top candidates."""
        distribution = session.distribution
        if distribution is None or app.beam is not None:
            return
        ranked = [c.token_id for c in distribution.candidates[: app.look_ahead]]
        session.look_ahead([session.strategy_choice(), *ranked], should_stop=cancelled.is_set)

    def _force_row(self, row: int, beam_row: int) -> Callable[[Session], object]:
        def force(session: Session) -> object:
            if self.beam is not None:
                return self._force_onto_beam(row, beam_row)
            distribution = session.distribution
            if distribution is None:
                return session.step()  # the session explains why nothing can be chosen
            if row >= len(distribution.candidates):
                raise SessionError(f"There is no row {row + 1}: the panel shows {len(distribution.candidates)} candidates.")
            return session.force(distribution.candidates[row].token_id)

        return force

    def _force_onto_beam(self, row: int, beam_row: int) -> None:
        if self.beam.ended:
            return self.beam.step()  # which explains that the search has ended
        candidates = self.beam.candidate_ids(beam_row)
        if row >= len(candidates):
            raise SessionError(f"There is no row {row + 1}: the panel shows {len(candidates)} candidates.")
        rank = self.beam.force(beam_row, candidates[row])
        if rank is not None:
            self.post_message(self.BeamHighlight(rank))  # the highlight follows the forced beam

    def _export(self, session: Session, app: TokenstepApp, cancelled: threading.Event) -> None:
        """The current path (or the beam search so far) in the formats of `tokenstep trace`: JSON
        (replayable), CSV and Markdown."""
        from decoding.trace import beam_trace_record, format_trace, trace_record

        record = beam_trace_record(app.beam) if app.beam is not None else trace_record(session)
        if not record["steps"]:
            raise SessionError("Nothing to export yet: take a step first.")
        stem = app.export_dir / time.strftime("tokenstep-trace-%Y%m%d-%H%M%S")
        for fmt, suffix in (("json", ".json"), ("csv", ".csv"), ("markdown", ".md")):
            write_atomically(stem.with_suffix(suffix), format_trace(record, fmt) + "\n")
        what = "beam search" if app.beam is not None else "path"
        app.post_message(app.Notice(f"Saved the {what} to {stem}.json, .csv and .md"))

    def _export_tree(self, session: Session, app: TokenstepApp, cancelled: threading.Event) -> None:
        from decoding import session_file

        path = app.export_dir / time.strftime("tokenstep-tree-%Y%m%d-%H%M%S.json")
        session_file.save(path, session.tree, session.engine, session.strategy, session.choices)
        app.post_message(app.Notice(f"Saved the whole tree to {path} (a session file: tokenstep --session opens it)"))

    # --- actions ----------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return self.running is not None and self.running.name == "play"

    def _pause(self) -> None:
        """Stop the running command between two model passes (the state it reached is shown)."""
        if self.running is not None:
            self.running.cancelled.set()

    def action_step(self) -> None:
        if self.playing:
            self._pause()  # space pauses play, as in a media player
            return
        self.enqueue(self._timed("step", self._step))

    def action_pick(self, row: int) -> None:
        self._pause_then(self._timed("pick", self._force_row(row, self.highlighted_beam)))

    def action_pick_highlighted(self) -> None:
        self.action_pick(self.query_one(CandidatePanel).cursor_row)

    def action_highlight(self, delta: int) -> None:
        panel = self.query_one(CandidatePanel)
        panel.move_cursor(panel.cursor_row + delta)

    def action_undo(self) -> None:
        self._pause_then(self._timed("undo", self._undo))

    def action_highlight_beam(self, delta: int) -> None:
        if self.beam_view is not None:
            self.highlighted_beam += delta
            self.refresh_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The beam keys only while beam search runs (hidden from the footer otherwise)."""
        if action == "highlight_beam":
            return self.beam_view is not None
        return True

    def action_play(self) -> None:
        if self.playing:
            self._pause()
        else:
            self.enqueue(Command("play", self._play))

    def action_stop(self) -> None:
        """Drop what is queued and cancel the running work (the state it reached is shown)."""
        self.queue.clear()
        self._pause()
        self.set_focus(None)

    def action_compare(self) -> None:
        screen = CompareScreen(COMPARE_NEW_TOKENS)
        command = Command("compare", lambda session, app, cancelled: app._compare(session, screen, cancelled))

        def closed(_: None) -> None:
            if command in self.queue:
                self.queue.remove(command)
            elif self.running is command:
                self._pause()  # the comparison stops between two steps

        self.push_screen(screen, closed)
        self._pause_then(command)

    def _compare(self, session: Session, screen: CompareScreen, cancelled: threading.Event) -> None:
        from decoding.compare import Cancelled, compare, comparison_record
        from decoding.settings import CHAPTER_STRATEGIES, parse_strategies

        strategies = parse_strategies(CHAPTER_STRATEGIES, seed=session.strategy.seed)
        progress = lambda done, total: screen.post_message(CompareScreen.Progress(done, total))  # noqa: E731
        try:
            if not session.engine.can_fork:
                raise SessionError(f"The compare view needs the transformers engine (the {session.engine.name} engine has one cache).")
            results = compare(session.engine.fork(), session.ids, strategies, COMPARE_NEW_TOKENS, cancelled.is_set, progress)
        except Cancelled:
            return
        except TokenstepError as error:
            screen.post_message(CompareScreen.Failed(str(error)))
            raise
        screen.post_message(CompareScreen.Done(comparison_record(session.text, COMPARE_NEW_TOKENS, results)))

    def action_export(self) -> None:
        self.enqueue(Command("export", self._export))

    def action_export_tree(self) -> None:
        self.enqueue(Command("export tree", self._export_tree))

    def action_toggle_tree(self) -> None:
        self.show_tree = not self.show_tree
        if self.show_tree:
            self.query_one(TreePanel).rows = ()  # its cursor starts where the session stands
            self.enqueue(Command("tree", lambda session, app, cancelled: None))  # its Updated carries the rows
            self.query_one(TreePanel).focus()
        else:
            self.set_focus(None)
        self.refresh_view()

    def action_sibling(self, delta: int) -> None:
        def to_sibling(session: Session) -> None:
            sibling = session.tree.sibling(session.tree.current, delta)
            if sibling == session.tree.current:
                raise SessionError("There is no other branch at this depth: [ and ] move between branches that fork here.")
            session.jump(sibling)
            self._restart_beam(session)

        self._pause_then(self._timed("sibling", to_sibling))

    @on(TreePanel.Delete)
    def delete_branch(self, event: TreePanel.Delete) -> None:
        def delete(session: Session) -> None:
            try:
                session.tree.delete(event.node_id)
            except ValueError:
                raise SessionError("That branch holds where you stand: jump elsewhere first, then delete it.") from None

        self._pause_then(self._timed("delete", delete))

    @on(TreePanel.Jump)
    def jump_to(self, event: TreePanel.Jump) -> None:
        if event.node_id is None:
            self.notify("That branch is from another model's session: read-only.", severity="warning")
            return

        def jump(session: Session) -> None:
            session.jump(event.node_id)
            self._restart_beam(session)

        self._pause_then(self._timed("jump", jump))

    def action_toggle_processors(self) -> None:
        """Show or hide what each processor did; the report is computed by the worker."""
        self.show_processors = not self.show_processors
        if self.show_processors:
            self.enqueue(Command("explain", lambda session, app, cancelled: None))  # its Updated carries the report
        self.refresh_view()

    def action_toggle_whitespace(self) -> None:
        self.visible_whitespace = not self.visible_whitespace

    def action_settings(self) -> None:
        current = self.snapshot
        settings = Settings(current.strategy, current.choices) if current else Settings(self.strategy, self.choices)

        def apply(result: Settings | None) -> None:
            if result is not None:
                self.strategy, self.choices = result.strategy, result.choices
                self.enqueue(self._timed("settings", lambda session: self._apply_settings(session, result)))

        self.push_screen(SettingsScreen(settings), apply)

    def _pause_then(self, command: Command) -> None:
        if self.playing:
            self._pause()
        self.enqueue(command)

    def _shown_prompt(self, prompt: str) -> str:
        """The prompt as the one-line box shows it: newlines and controls as visible escapes, never raw.
        Sent again unedited, the box stands for the prompt itself."""
        shown = one_line(prompt)
        self._prompts_shown[shown] = prompt
        return shown

    @on(Input.Submitted, "#prompt")
    def new_prompt(self, event: Input.Submitted) -> None:
        self.action_stop()
        self.enqueue(self._reset_command(self._prompts_shown.get(event.value, event.value)))

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None, markup: bool = True) -> None:
        """Every notification passes here: control characters and escape sequences (from a model, a
        file or a prompt) are shown as visible escapes, never sent to the terminal."""
        super().notify(escape_controls(message), title=escape_controls(title), severity=severity, timeout=timeout, markup=markup)

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None, time_format: str | None = None) -> str | None:
        """The palette's Screenshot saves where exports go (Textual's default, ~/Downloads, is often
        missing over SSH)."""
        return super().deliver_screenshot(filename, path or str(self.export_dir), time_format)

    @on(CandidatePanel.RowSelected)
    def row_clicked(self, event: CandidatePanel.RowSelected) -> None:
        self.action_pick(event.row)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Step", "One step by the current strategy", self.action_step)
        yield SystemCommand("Undo", "Take back the last token", self.action_undo)
        yield SystemCommand("Play / pause", "Keep stepping until EOS, the limit, or a key", self.action_play)
        yield SystemCommand("Strategy settings", "Greedy or sampling, temperature, top-k, top-p, seed, k...", self.action_settings)
        yield SystemCommand("Set candidates shown (k)", "How many candidates the panel lists", self.action_settings)
        yield SystemCommand("Switch to greedy", "Choose the most likely token", lambda: self._switch("greedy"))
        yield SystemCommand("Switch to sampling", "Draw from the (processed) distribution", lambda: self._switch("sample"))
        yield SystemCommand("Switch to beam search", "Step all beams at once (settings: s)", lambda: self._switch("beam"))
        yield SystemCommand("Toggle visible whitespace", "Show spaces and newlines as ␣ and ↵", self.action_toggle_whitespace)
        yield SystemCommand("Toggle processor view", "What temperature, top-k, top-p, penalties did to the candidates", self.action_toggle_processors)
        yield SystemCommand("Export path", "Save the current path as JSON, CSV and Markdown traces", self.action_export)
        yield SystemCommand("Export tree", "Save every branch as JSON (a session file)", self.action_export_tree)
        yield SystemCommand("Toggle tree", "Every branch walked; enter jumps to one", self.action_toggle_tree)
        yield SystemCommand("Compare strategies", "Greedy, beam, sampling, top-k, top-p side by side from here", self.action_compare)
        yield SystemCommand("Load another model", "A Hub id, folder or .gguf file", self.action_choose_model)

    def _apply_settings(self, session: Session, settings: Settings) -> None:
        """New settings; beam search (re)starts from the path as it stands. Refused as a whole if
        the engine cannot run it (the old strategy stays)."""
        old = session.strategy, session.choices
        session.set_strategy(settings.strategy)
        session.set_choices(settings.choices)
        try:
            self._restart_beam(session)
        except TokenstepError:
            session.set_strategy(old[0])
            session.set_choices(old[1])
            raise

    def _switch(self, kind: str) -> None:
        current = self.snapshot.strategy if self.snapshot else self.strategy
        self.strategy = current.with_changes(kind=kind)
        settings = Settings(self.strategy, self.choices)
        self.enqueue(self._timed("settings", lambda session: self._apply_settings(session, settings)))


def _said(error: Exception) -> str:
    """An error for a notification: our own errors say what to do; others are named."""
    return str(error) if isinstance(error, TokenstepError) else f"{type(error).__name__}: {error}"


def _short_model_name(model_id: str) -> str:
    """A local folder or file is shown by its name; a Hub id as it is."""
    path = Path(model_id).expanduser()
    return path.name if path.exists() else model_id



