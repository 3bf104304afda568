"""The explorer: type a prompt, step token by token, force-pick from the live candidate panel.

The app renders the frozen `View`s the core sends, binds keys and queues commands. Every command
runs, one at a time and in the order asked, on the one model thread, which posts messages; no widget
is touched from that thread, and no decoding decision is taken here (they live in `decoding`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.widgets import Footer, Input, Label, TextArea

from decoding.core.chat import PromptRequest
from decoding.core.errors import TokenstepError, said
from decoding.core.settings import Strategy
from decoding.core.state import Snapshot, Timing
from decoding.core.tokens import escape_controls, one_line
from decoding.engines.registry import LoadOptions, named, switched_model
from decoding.explorer import commands
from decoding.explorer.runner import Runner
from tui import messages
from tui.actions import bindings
from tui.ask_screen import AskScreen
from tui.compare_screen import CompareScreen
from tui.pacing import FramePacer
from tui.palette import ActionCommands
from tui.panels import PANELS
from tui.settings_screen import Settings, SettingsScreen
from tui.widgets.beams import BeamPanel
from tui.widgets.candidates import CandidatePanel
from tui.widgets.fields import Field, MessageBox
from tui.widgets.lens_view import LensPanel
from tui.widgets.spinner import Spinner
from tui.widgets.status import StatusLine
from tui.widgets.text_view import HEATS, TextView, heat_named, next_heat

if TYPE_CHECKING:  # torch loads on the model thread, after the first paint
    from decoding.core.prompt import Prompt
    from decoding.explorer.explorer import Explorer, View
    from decoding.records.session_file import SavedSession
    from decoding.search.session import Session

Clock = Callable[[], float]
# The model thread gives up the GIL for every torch kernel and must take it back after; while the UI
# thread paints, that wait is up to the switch interval (5 ms by default) each time. 1 ms kept play at
# 0.93-0.99 of the session's own loop where 5 ms gave 0.82-0.88 (`python benchmarks/run.py app_play`).
SWITCH_INTERVAL_SECONDS = 0.001
ENDED_NOTES = {"eos": "end of sequence: ⌫ takes it back", "context limit": "the context is full: ⌫ takes a token back"}


class RunnerNews:
    """The runner's news, told on the model thread, as messages to the app's own thread."""

    def __init__(self, app: App) -> None:
        self.post = app.post_message

    def updated(self, view: View, timing: Timing | None) -> None:
        self.post(messages.Updated(view, timing))

    def failed(self, text: str) -> None:
        self.post(messages.CommandFailed(text))

    def notice(self, text: str) -> None:
        self.post(messages.Notice(text))

    def highlight_beam(self, rank: int) -> None:
        self.post(messages.BeamHighlight(rank))

    def done(self) -> None:
        self.post(messages.CommandDone())


class TokenstepApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    AUTO_FOCUS = None  # keys step at once; tab (or a click) goes to the prompt
    TITLE = "tokenstep"
    BINDINGS = bindings()  # type: ignore[assignment]  # a list of Binding is what App expects, typed invariantly
    COMMANDS = App.COMMANDS | {ActionCommands}

    def __init__(
        self,
        load_options: LoadOptions = LoadOptions(),
        strategy: Strategy = Strategy(),
        *,
        prompt: str | PromptRequest = "Transformers are the",
        prefill: str | None = None,
        choices: int = 10,
        max_new_tokens: int = 256,
        look_ahead: int = 5,
        exact_replay: bool = False,
        export_dir: Path | None = None,
        clock: Clock = time.perf_counter,
        session_path: Path | None = None,
        saved: SavedSession | None = None,
        second_options: LoadOptions | None = None,
    ) -> None:
        super().__init__()
        self.second_options = second_options  # a second model along the same path
        self.load_options, self.strategy, self.choices = load_options, strategy, choices
        self.request = prompt if isinstance(prompt, PromptRequest) else PromptRequest(prompt)
        self.prefill, self.max_new_tokens = prefill, max_new_tokens
        self.chat_mode, self.system = self.request.chat, self.request.system  # the box takes chat messages
        self.exact_replay = exact_replay  # reopen and jump token by token
        self.export_dir = export_dir or Path.cwd()
        self.clock = clock
        self.session_path, self.saved = session_path, saved
        self.view: View | None = None
        self.timing = Timing()
        self.highlighted_beam = 0
        self.open_panels: frozenset[str] = frozenset()  # read by the model thread to compute them
        self.pacer = FramePacer()  # how often play's frames come
        self.loading = False  # a model is being loaded (its Loaded or LoadFailed is still to come)
        self.runner = Runner(
            RunnerNews(self),
            clock,
            look_ahead=look_ahead,
            open_panels=lambda: self.open_panels,
            frame_seconds=lambda: self.pacer.seconds,
        )
        self._prompts_shown: dict[str, str] = {}  # the prompt box's text -> the prompt it stands for
        self._unsent = ""  # the last message sent, put back in the box if it is refused
        self.heat = HEATS[0].name  # how the text is tinted (h cycles)

    # --- what tests and benchmarks read, when the app is idle ---------------------------------------

    @property
    def snapshot(self):
        return self.view.snapshot if self.view is not None else None

    @property
    def beam_view(self):
        return self.view.beam if self.view is not None else None

    @property
    def session(self) -> Session | None:
        return self.explorer.session if self.explorer is not None else None

    @property
    def idle(self) -> bool:
        """No model work running or waiting."""
        return not self.loading and self.runner.idle

    @property
    def explorer(self) -> Explorer | None:
        """The exploration, once loaded: the model thread's, never used on this one."""
        return self.runner.explorer

    @property
    def running(self) -> commands.Command | None:
        return self.runner.running

    @property
    def playing(self) -> bool:
        return self.runner.playing

    @property
    def look_ahead(self) -> int:
        """Candidates whose next panel is computed while the person reads."""
        return self.runner.look_ahead

    @look_ahead.setter
    def look_ahead(self, candidates: int) -> None:
        self.runner.look_ahead = candidates

    def enqueue(self, command: commands.Command) -> None:
        self.runner.enqueue(command)

    # --- set-up -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        text = "" if self.request.chat else self.request.text
        prompt = Field(self._shown_prompt(text), placeholder="Type a prompt, then enter", id="prompt", select_on_focus=False)
        prompt.border_title = "prompt · tab to edit, enter to run · ctrl+t chat"
        yield prompt
        message = MessageBox(id="message", soft_wrap=True, show_line_numbers=False, placeholder="Type a message")
        message.border_title = "message · tab to edit, ctrl+s sends · ctrl+n new conversation · ctrl+t plain prompt"
        yield message
        with Vertical(id="loading"):
            yield Spinner()
            yield Label(Text(escape_controls(f"Loading {self._model_name()}…")), id="loading-text")
        with Horizontal(id="main"):
            yield TextView(id="text")
            yield BeamPanel(id="beams")
            yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "main")
            with Vertical(id="side"):
                with VerticalScroll(id="candidates-scroll"):
                    yield CandidatePanel(id="candidates")
                yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "side")
        yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "bottom")
        yield StatusLine(Text("loading…"), id="status")
        yield Footer(compact=True)  # the keys most needed fit at 80 columns, all of them at 120

    def on_mount(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._show_prompt_box()
        self.query_one("#main").display = False
        self.query_one(BeamPanel).display = False
        for spec in PANELS:
            self.query_one(f"#{spec.name}").display = False

    def on_ready(self) -> None:
        # Sent after the first frame is painted: importing torch holds the GIL for a second or more,
        # so started any earlier it would keep the first frame off the screen.
        self.runner.start()
        self.load(self.load_options, Settings(self.strategy, self.choices), self.request, self.prefill)

    def on_unmount(self) -> None:
        self.runner.close()

    def _model_name(self) -> str:
        options = self.load_options
        return f"{named(options)} ({options.engine}, device {options.device}, dtype {options.dtype})"

    # --- loading, on the model thread -----------------------------------------------------------

    def load(self, options: LoadOptions, settings: Settings, request: PromptRequest | None, prefill: str | None = None) -> None:
        """Load the model on the model thread, then open the exploration at the prompt asked for
        (or the saved tree), and force `prefill`."""
        self.loading = True
        self.runner.submit(partial(self._load, options, settings, request, prefill))

    def _load(self, options: LoadOptions, settings: Settings, request: PromptRequest | None, prefill: str | None) -> None:
        """On the model thread. Every failure ends in a message: the spinner never waits forever."""
        try:
            explorer = self._new_explorer(options, settings)
        except TokenstepError as error:
            self.post_message(messages.LoadFailed(str(error)))
            return
        except Exception as error:  # a model that breaks transformers: say so, keep the app
            self.post_message(messages.LoadFailed(f"The model could not be loaded: {said(error)}"))
            return
        if self.second_options is not None:
            from decoding.explorer.opening import add_second_model

            if (left_out := add_second_model(explorer, self.second_options, self._progress)) is not None:
                self.post_message(messages.CommandFailed(f"The second model is left out: {left_out}"))
        start = self.clock()  # the first panel, computed on this thread while it is warm; keys wait
        try:
            from decoding.core.grammar import compile_notes

            with compile_notes(self._progress):
                explorer.open(self._first_prompt(explorer, request))
            if prefill:
                explorer.force_text(prefill)
        except Exception as error:  # a prompt the model cannot take, a session folder that fails: the app still opens
            self.post_message(messages.CommandFailed(said(error)))
        try:
            view = explorer.view(self.open_panels)
        except Exception as error:
            self.post_message(messages.LoadFailed(f"The model loaded, but its first panel failed: {said(error)}"))
            return
        self.post_message(messages.Loaded(explorer, view, Timing(latency_ms=1000 * (self.clock() - start))))

    def _progress(self, text: str) -> None:
        self.post_message(messages.LoadProgress(text))

    def _first_prompt(self, explorer: Explorer, request: PromptRequest | None) -> Prompt | None:
        """The prompt to open at; a chat the model cannot take is said and skipped (a message follows)."""
        if request is None or (request.chat and not request.text and not request.messages):
            return None  # a chat to be started with the first message sent
        try:
            return request.build(explorer.engine)
        except TokenstepError as error:
            self.post_message(messages.CommandFailed(str(error)))
            return None

    def _new_explorer(self, options: LoadOptions, settings: Settings) -> Explorer:
        from decoding.explorer.opening import open_explorer  # torch is imported here, after the first paint
        from decoding.records.keeper import SessionKeeper

        keeper = SessionKeeper(self.session_path, self.saved, lambda text: self.post_message(messages.CommandFailed(text)))
        self.saved = None  # reopened once
        return open_explorer(
            options,
            settings.strategy,
            settings.choices,
            max_new_tokens=self.max_new_tokens,
            progress=self._progress,
            keeper=keeper,
            exact_replay=self.exact_replay,
        )

    @on(messages.CommandDone)
    def _command_done(self) -> None:
        self.runner.command_done()

    # --- news from the model thread ---------------------------------------------------------------

    @on(messages.LoadProgress)
    def _load_progress(self, message: messages.LoadProgress) -> None:
        self.query_one("#loading-text", Label).update(Text(escape_controls(message.text + "…")))

    @on(messages.Loaded)
    def _loaded(self, message: messages.Loaded) -> None:
        self.loading = False
        self.query_one(Spinner).stop()
        self.query_one("#loading").display = False
        self.query_one("#main").display = True
        if message.view.snapshot.prompt and not message.view.snapshot.chat:
            self.query_one("#prompt", Input).value = self._shown_prompt(message.view.snapshot.prompt)  # a reopened session's
        self._updated(messages.Updated(message.view, message.timing))
        self.runner.loaded(message.explorer)

    @on(messages.LoadFailed)
    def _load_failed(self, message: messages.LoadFailed) -> None:
        self.loading = False
        self.runner.queue.clear()  # nothing runs without a model
        self.query_one(Spinner).stop()
        self.query_one("#loading-text", Label).update(
            Text(escape_controls(message.text) + "\n\nPress m to try another model, or q to quit.", style="bold red")
        )
        self.query_one("#status", StatusLine).update(Text("no model loaded"))

    @on(messages.Updated)
    def _updated(self, message: messages.Updated) -> None:
        if (message.view.beam is None) != (self.beam_view is None):
            self.refresh_bindings()  # the beam keys come and go with beam search
        self.view = message.view
        if message.timing is not None:
            self.timing = message.timing
        self.refresh_view()
        if self.playing:
            self.pacer.painted()

    @on(messages.CommandFailed)
    def _command_failed(self, message: messages.CommandFailed) -> None:
        self.notify(message.text, severity="warning", markup=False)
        box = self.query_one("#message", TextArea)
        if isinstance(self.running, (commands.Say, commands.NewChat)) and not box.text:
            box.text = self._unsent  # a message that was not taken is not lost

    @on(messages.Notice)
    def _notice(self, message: messages.Notice) -> None:
        self.notify(message.text, markup=False)

    @on(messages.BeamHighlight)
    def _beam_highlight(self, message: messages.BeamHighlight) -> None:
        self.highlighted_beam = message.rank
        self.refresh_view()

    @on(messages.RunCommand)
    def _run_command(self, message: messages.RunCommand) -> None:
        self.runner.pause_then(message.command)

    # --- rendering --------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        view = self.view
        if view is None:
            return
        main_panel = next((spec.name for spec in PANELS if spec.place == "main" and spec.name in self.open_panels), None)
        for spec in PANELS:
            widget = self.query_one(f"#{spec.name}")
            widget.display = spec.name in self.open_panels and (spec.place != "main" or spec.name == main_panel)
            if widget.display and spec.name in view.panels:
                widget.show(view.panels[spec.name], view)  # type: ignore[attr-defined]  # every panel widget has show()
        beam = view.beam
        self.query_one(TextView).display = beam is None and main_panel is None
        self.query_one(BeamPanel).display = beam is not None and main_panel is None
        if beam is None:
            snapshot = view.snapshot
            self.query_one(TextView).show(snapshot, self.visible_whitespace, heat_named(self.heat), clickable=not self.playing)
            self._show_candidates(snapshot)
            self.query_one(StatusLine).show(snapshot, self.timing, view.model)
            return
        self.highlighted_beam = max(0, min(self.highlighted_beam, len(beam.beams) - 1))
        self.query_one(BeamPanel).show(beam, self.highlighted_beam)
        candidates = beam.candidates[self.highlighted_beam] if beam.candidates else None
        self.query_one(CandidatePanel).show(candidates, "the beam search has ended: ⌫ takes a step back")
        self.query_one(StatusLine).show_beam(beam, self.timing, view.model)

    def _show_candidates(self, snapshot: Snapshot) -> None:
        """The next token's candidates, or those on offer at the step looked at, its choice marked."""
        panel = self.query_one(CandidatePanel)
        if snapshot.cursor is not None:
            chosen = snapshot.path[snapshot.cursor]
            note = f"step {snapshot.cursor + 1} of {len(snapshot.path)}: a digit branches here, esc goes back"
            panel.show(snapshot.panels[snapshot.cursor], note, snapshot.chat, chosen=chosen)
            return
        note = ENDED_NOTES.get(snapshot.finished or "", "")
        if snapshot.chat and snapshot.finished == "eos":
            note = "the reply has ended: send the next message (ctrl+s), or ⌫ takes it back"
        panel.show(snapshot.distribution, note, snapshot.chat)

    visible_whitespace = False  # show spaces, tabs and newlines in the running text as ␣ ⇥ ↵

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification passes here: control characters and escape sequences (from a model, a
        file or a prompt) are shown as visible escapes, never sent to the terminal."""
        super().notify(escape_controls(message), title=escape_controls(title), severity=severity, timeout=timeout, markup=markup)

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """The palette's Screenshot saves where exports go (Textual's default, ~/Downloads, is often
        missing over SSH)."""
        return super().deliver_screenshot(filename, path or str(self.export_dir), time_format)

    def _shown_prompt(self, prompt: str) -> str:
        """The prompt as the one-line box shows it: newlines and controls as visible escapes, never raw.
        Sent again unedited, the box stands for the prompt itself."""
        shown = one_line(prompt)
        self._prompts_shown[shown] = prompt
        return shown

    # --- actions ----------------------------------------------------------------------------------

    def action_step(self) -> None:
        if self.playing:
            self.runner.pause()  # space pauses play, as in a media player
            return
        self.enqueue(commands.Step())

    def action_pick(self, row: int) -> None:
        cursor = self.snapshot.cursor if self.snapshot is not None and self.beam_view is None else None
        self.runner.pause_then(commands.Pick(row, self.highlighted_beam) if cursor is None else commands.PickAt(cursor, row))

    def action_look(self, index: int | None) -> None:
        """Look at path token `index` (a click on it): its stored candidates, no model work."""
        self.runner.pause_then(commands.Look(index))

    def action_move_cursor(self, delta: int) -> None:
        """Move the cursor over the path's tokens; past the last one is the live end again."""
        snapshot = self.snapshot
        if snapshot is None or not snapshot.path or self.beam_view is not None:
            return
        at = len(snapshot.path) if snapshot.cursor is None else snapshot.cursor
        index = max(0, min(at + delta, len(snapshot.path)))
        self.action_look(None if index == len(snapshot.path) else index)

    def action_heat(self) -> None:
        """The next heat view: probability, entropy, rank, off (and with a second model, disagreement)."""
        self.heat = next_heat(self.heat, self.snapshot is not None and self.snapshot.second is not None)
        self.refresh_view()

    def action_pick_highlighted(self) -> None:
        self.action_pick(self.query_one(CandidatePanel).cursor_row)

    def action_highlight(self, delta: int) -> None:
        panel = self.query_one(CandidatePanel)
        panel.move_cursor(panel.cursor_row + delta)
        self.query_one(LensPanel).highlight(panel.cursor_row)

    def action_undo(self) -> None:
        self.runner.pause_then(commands.Undo())

    def action_highlight_beam(self, delta: int) -> None:
        if self.beam_view is not None:
            self.highlighted_beam += delta
            self.refresh_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The beam keys only while beam search runs, the cursor's only while it does not (each
        hidden from the footer otherwise)."""
        if action == "highlight_beam":
            return self.beam_view is not None
        if action == "move_cursor":
            return self.beam_view is None
        return True

    def action_play(self) -> None:
        if self.playing:
            self.runner.pause()
        else:
            self.pacer.restart()
            self.enqueue(commands.Play())

    def action_stop(self) -> None:
        """Drop what is queued and cancel the running work (the state it reached is shown)."""
        self.runner.stop()
        self.set_focus(None)
        if self.snapshot is not None and self.snapshot.cursor is not None:
            self.enqueue(commands.Look(None))  # back to the live end

    def action_compare(self) -> None:
        screen = CompareScreen()
        command = commands.Compare(
            progress=lambda done, total: screen.post_message(messages.ComparisonProgress(done, total)),
            done=lambda record: screen.post_message(messages.ComparisonDone(record)),
            failed=lambda text: screen.post_message(messages.ComparisonFailed(text)),
        )

        def closed(_: None) -> None:
            self.runner.drop(command)  # a comparison running stops between two steps

        self.push_screen(screen, closed)
        self.runner.pause_then(command)

    def action_export(self) -> None:
        self.enqueue(commands.Export(self.export_dir))

    def action_export_tree(self) -> None:
        self.enqueue(commands.Export(self.export_dir, tree=True))

    def action_toggle_panel(self, name: str) -> None:
        """Show or hide a registered panel; its value is computed by the model thread."""
        opening = name not in self.open_panels
        self.open_panels = self.open_panels | {name} if opening else self.open_panels - {name}
        spec = next(spec for spec in PANELS if spec.name == name)
        if opening:
            self.enqueue(commands.Refresh())  # its Updated carries the panel's value
        if spec.place == "main":
            self.set_focus(self.query_one(f"#{name}") if opening else None)
        self.refresh_view()

    def action_sibling(self, delta: int) -> None:
        self.runner.pause_then(commands.Sibling(delta))

    def action_toggle_whitespace(self) -> None:
        self.visible_whitespace = not self.visible_whitespace
        self.refresh_view()

    def action_switch(self, kind: str) -> None:
        self.enqueue(commands.Switch(kind))

    def action_settings(self, field: str | None = None) -> None:
        """The settings, `field` focused (the first if None)."""
        current = self.snapshot
        settings = Settings(current.strategy, current.choices) if current else Settings(self.strategy, self.choices)

        def apply(result: Settings | None) -> None:
            if result is not None:
                self.strategy, self.choices = result.strategy, result.choices
                self.enqueue(commands.ApplySettings(result.strategy, result.choices))

        self.push_screen(SettingsScreen(settings, field), apply)

    def action_choose_model(self) -> None:
        def chosen(model: str | None) -> None:
            if model is None:
                return
            try:
                self.load_options = switched_model(self.load_options, model)
            except TokenstepError as error:
                self.notify(str(error), severity="error", markup=False)
                return
            self.action_stop()
            if self.session_path is not None:  # the old file keeps the old model's tree
                from decoding.records.session_file import new_session_path

                try:
                    self.session_path = new_session_path()
                except TokenstepError as error:
                    self.notify(str(error), severity="error", markup=False)
                    return
            self.runner.explorer, self.view = None, None  # the old model goes once nothing holds it
            self.query_one("#main").display = False
            self.query_one("#loading").display = True
            self.query_one(Spinner).start()
            self.query_one("#loading-text", Label).update(Text(escape_controls(f"Loading {self._model_name()}…")))
            plain = self.query_one("#prompt", Input).value
            self.load(self.load_options, Settings(self.strategy, self.choices), None if self.chat_mode else PromptRequest(plain))

        question = (
            "Model to load: a Hub id, a local folder, a .gguf file or a server's http:// address (empty: the embedded model)"
        )
        self.push_screen(AskScreen(question, "HuggingFaceTB/SmolLM2-135M-Instruct"), chosen)

    @on(Input.Submitted, "#prompt")
    def new_prompt(self, event: Input.Submitted) -> None:
        self.action_stop()
        self.enqueue(commands.NewPrompt(self._prompts_shown.get(event.value, event.value)))

    # --- chat ----------------------------------------------------------------------------------------

    def action_toggle_chat(self) -> None:
        """The prompt box takes a plain prompt, or a chat message (the exploration is not changed)."""
        self.chat_mode = not self.chat_mode
        self._show_prompt_box()
        self.set_focus(self.query_one("#message" if self.chat_mode else "#prompt"))

    def _show_prompt_box(self) -> None:
        self.query_one("#prompt").display = not self.chat_mode
        self.query_one("#message").display = self.chat_mode

    def action_send(self, new: bool = False) -> None:
        """Send the message box: the next turn of the conversation (or, `new`, a new conversation)."""
        if not self.chat_mode:
            return
        box = self.query_one("#message", TextArea)
        if not box.text.strip():
            self.notify("The message is empty: type something to send.", severity="warning", markup=False)
            return
        self.action_stop()
        self._unsent = box.text
        self.enqueue(commands.NewChat(box.text, self.system) if new else commands.Say(box.text, self.system))
        box.clear()

    def action_force_text(self) -> None:
        def chosen(text: str | None) -> None:
            if text:
                self.runner.pause_then(commands.ForceText(text))

        self.push_screen(AskScreen("Text to force, token by token (a reply can start with it):", strip=False), chosen)

    @on(CandidatePanel.RowSelected)
    def row_clicked(self, event: CandidatePanel.RowSelected) -> None:
        self.action_pick(event.row)
