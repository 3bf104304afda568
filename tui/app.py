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
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input

from decoding.core.chat import PromptRequest
from decoding.core.errors import TokenstepError
from decoding.core.settings import Strategy
from decoding.core.state import ATTRIBUTION_METHODS, Timing
from decoding.core.steering import Steering
from decoding.core.tokens import escape_controls
from decoding.engines.registry import LoadOptions, named, switched_model
from decoding.explorer import commands
from decoding.explorer.runner import Runner
from decoding.records.session_file import new_session_path
from tui import messages
from tui.actions import ACTIONS, available, bindings
from tui.ask_screen import MODEL_EXAMPLE, MODEL_QUESTION, AskScreen
from tui.compare_screen import CompareScreen
from tui.futures_screen import FuturesScreen
from tui.heat_colours import heat_tints
from tui.layout import ExplorationArea
from tui.pacing import SWITCH_INTERVAL_SECONDS, FramePacer
from tui.palette import ActionCommands
from tui.panels import PANELS, show_panels
from tui.settings_screen import Settings, SettingsScreen
from tui.steering_screen import SteeringChoice, SteeringScreen
from tui.widgets.beams import BeamPanel
from tui.widgets.candidates import CandidatePanel
from tui.widgets.draft_strip import DraftStrip
from tui.widgets.fields import MessageBox, PromptField
from tui.widgets.lens_view import LensPanel
from tui.widgets.loading import LoadingPane
from tui.widgets.status import StatusLine
from tui.widgets.text_view import HEATS, TextView, heat_named, next_heat
from tui.widgets.tree_view import TreePanel

if TYPE_CHECKING:  # torch loads on the model thread, after the first paint
    from decoding.explorer.explorer import View
    from decoding.records.session_file import SavedSession
    from decoding.search.session import Session

Clock = Callable[[], float]


def known_bindings() -> dict[str, tuple[str, str]]:
    """Every binding a keymap may remap: its id -> (where it binds, its default keys)."""
    known = {action.id: ("app", action.keys) for action in ACTIONS if action.keys is not None}
    for owner in (CompareScreen, FuturesScreen, SettingsScreen, AskScreen, TreePanel):
        for binding in owner.BINDINGS:
            if isinstance(binding, Binding) and binding.id is not None:
                known[binding.id] = (owner.__name__, binding.key)
    return known


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
        keymap: dict[str, str] | None = None,
        theme: str | None = None,
        heat_colours: str = "classic",
        steering: Steering | None = None,
        draft: tuple[LoadOptions, int] | None = None,
    ) -> None:
        super().__init__()
        self.draft = draft  # speculative decoding's draft model, and its tokens a round
        self.steering = steering  # asked for on the command line; the steering screen changes it
        self.keymap = dict(keymap or {})  # the user's keys (tui.keys), by binding id
        self.theme_asked, self.heat_colours = theme, heat_colours
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
            messages.RunnerNews(self),
            clock,
            look_ahead=look_ahead,
            open_panels=lambda: self.open_panels,
            frame_seconds=lambda: self.pacer.seconds,
        )
        self.heat = HEATS[0].name  # how the text is tinted (h cycles)
        self.attribution_method = next(iter(ATTRIBUTION_METHODS))  # a attributes by it, A changes it

    # --- what tests and benchmarks read, when the app is idle ---------------------------------------

    @property
    def snapshot(self):
        return self.view.snapshot if self.view is not None else None

    @property
    def beam_view(self):
        return self.view.beam if self.view is not None else None

    @property
    def session(self) -> Session | None:
        return self.runner.explorer.session if self.runner.explorer is not None else None

    @property
    def idle(self) -> bool:
        """No model work running or waiting."""
        return not self.loading and self.runner.idle

    @property
    def playing(self) -> bool:
        return self.runner.playing

    def enqueue(self, command: commands.Command) -> None:
        self.runner.enqueue(command)

    # --- set-up -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        text = "" if self.request.chat else self.request.text
        yield PromptField(text, placeholder="Type a prompt, then enter", id="prompt", select_on_focus=False)
        yield MessageBox(id="message", soft_wrap=True, show_line_numbers=False, placeholder="Type a message")
        yield LoadingPane(f"Loading {self._model_name()}", id="loading")
        yield ExplorationArea(id="main")
        yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "bottom")
        yield StatusLine(Text("loading…"), id="status")
        yield Footer(compact=True)  # the keys most needed fit at 80 columns, all of them at 120

    def on_mount(self) -> None:
        if self.keymap:
            self.set_keymap(self.keymap)
        if self.theme_asked:
            self.theme = self.theme_asked
        self.theme_changed_signal.subscribe(self, lambda theme: self.refresh_view())  # the heat may follow the theme
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._show_prompt_box()
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
        self.runner.submit(partial(self._open, options, settings, request, prefill))

    def _open(self, options: LoadOptions, settings: Settings, request: PromptRequest | None, prefill: str | None) -> None:
        """On the model thread. Every failure ends in a message: the spinner never waits forever."""
        from decoding.explorer.opening import Opening, OpeningFailed, open_exploration  # torch is imported here
        from decoding.records.keeper import SessionKeeper

        strategy, choices, second = settings.strategy, settings.choices, self.second_options
        opening = Opening(
            options,
            strategy,
            choices,
            request,
            prefill,
            second,
            self.max_new_tokens,
            self.exact_replay,
            self.steering,
            self.draft,
        )
        keeper, self.saved = SessionKeeper(self.session_path, self.saved, self._warn), None  # reopened once
        try:
            opened = open_exploration(opening, keeper, self.open_panels, self._progress, self._warn, self.clock)
        except OpeningFailed as error:
            self.post_message(messages.LoadFailed(str(error)))
            return
        self.post_message(messages.Loaded(opened.explorer, opened.view, Timing(latency_ms=opened.latency_ms)))

    def _warn(self, text: str) -> None:
        self.post_message(messages.CommandFailed(text))

    def _progress(self, text: str) -> None:
        self.post_message(messages.LoadProgress(text))

    @on(messages.CommandDone)
    def _command_done(self) -> None:
        self.runner.command_done()

    # --- news from the model thread ---------------------------------------------------------------

    @on(messages.LoadProgress)
    def _load_progress(self, message: messages.LoadProgress) -> None:
        self.query_one(LoadingPane).say(message.text)

    @on(messages.Loaded)
    def _loaded(self, message: messages.Loaded) -> None:
        self.loading = False
        self.query_one(LoadingPane).done()
        self.query_one("#main").display = True
        if message.view.snapshot.prompt and not message.view.snapshot.chat:
            self.query_one(PromptField).show(message.view.snapshot.prompt)  # a reopened session's
        self._updated(messages.Updated(message.view, message.timing))
        self.runner.loaded(message.explorer)

    @on(messages.LoadFailed)
    def _load_failed(self, message: messages.LoadFailed) -> None:
        self.loading = False
        self.runner.queue.clear()  # nothing runs without a model
        self.query_one(LoadingPane).failed(message.text)
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
        if isinstance(self.runner.running, (commands.Say, commands.NewChat)):
            self.query_one(MessageBox).give_back()

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
        main_panel = show_panels(self, self.open_panels, view)
        beam = view.beam
        self.query_one(TextView).display = beam is None and main_panel is None
        self.query_one(BeamPanel).display = beam is not None and main_panel is None
        if beam is None:
            snapshot = view.snapshot
            heat = heat_named(self.heat, self.heat_tints)
            self.query_one(TextView).show(snapshot, self.visible_whitespace, heat, clickable=not self.playing)
            self.query_one(CandidatePanel).show_snapshot(snapshot)
            self.query_one(DraftStrip).show(snapshot.draft)
            self.query_one(StatusLine).show(snapshot, self.timing, view.model)
            return
        self.query_one(DraftStrip).show(None)
        self.highlighted_beam = max(0, min(self.highlighted_beam, len(beam.beams) - 1))
        self.query_one(BeamPanel).show(beam, self.highlighted_beam)
        self.query_one(CandidatePanel).show_beam(beam, self.highlighted_beam)
        self.query_one(StatusLine).show_beam(beam, self.timing, view.model)

    visible_whitespace = False  # show spaces, tabs and newlines in the running text as ␣ ⇥ ↵

    @property
    def heat_tints(self) -> tuple[str, ...]:
        """The heat palette in use: classic, colour-blind, or the current theme's."""
        return heat_tints(self.heat_colours, self.current_theme)

    def keys_for(self, binding: str, default: str | None) -> str | None:
        """The keys a binding has now: the user's keymap's, else its own."""
        return self.keymap.get(binding, default)

    def notify(self, message: str, *, title: str = "", **options: Any) -> None:
        """Every notification passes here: control characters and escape sequences (from a model, a
        file or a prompt) are shown as visible escapes, never sent to the terminal."""
        super().notify(escape_controls(message), title=escape_controls(title), **options)

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """The palette's Screenshot saves where exports go (Textual's default, ~/Downloads, is often
        missing over SSH)."""
        return super().deliver_screenshot(filename, path or str(self.export_dir), time_format)

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
        self.runner.pause_then(commands.MoveCursor(delta))

    def action_heat(self) -> None:
        """The next heat view: probability, entropy, rank, off (and with a second model, disagreement),
        attribution (the highlighted candidate's, computed on the way in if there is none)."""
        snapshot = self.snapshot
        self.heat = next_heat(
            self.heat, snapshot is not None and snapshot.second is not None, snapshot is not None and snapshot.draft is not None
        )
        self.refresh_view()
        if self.heat == "attribution" and self.snapshot is not None and self.snapshot.attribution is None:
            self.action_attribute()

    def action_attribute(self) -> None:
        """The highlighted candidate's attribution over its context, shown as the heat."""
        if self.heat != "attribution":
            self.heat = "attribution"
            self.refresh_view()
        self.runner.pause_then(commands.Attribute(self.attribution_method, self.query_one(CandidatePanel).cursor_row))

    def action_attribution_method(self) -> None:
        methods = list(ATTRIBUTION_METHODS)
        self.attribution_method = methods[(methods.index(self.attribution_method) + 1) % len(methods)]
        self.notify(f"Attribution by {ATTRIBUTION_METHODS[self.attribution_method]}", markup=False)
        self.action_attribute()

    def action_steering(self) -> None:
        def chosen(choice: SteeringChoice | None) -> None:
            if choice is not None:
                self.steering = choice.steering  # a model loaded next is steered alike
                self.runner.pause_then(commands.Steer(choice.steering))

        current = self.view.steering if self.view is not None else self.steering
        self.push_screen(SteeringScreen(current, self.view.layers if self.view is not None else None), chosen)

    def action_nudge_steering(self, delta: float) -> None:
        self.runner.pause_then(commands.NudgeSteering(delta))

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
        return available(action, beam=self.beam_view is not None)  # hidden from the footer otherwise

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
        command = screen.command()

        def closed(_: None) -> None:
            self.runner.drop(command)  # a comparison running stops between two steps

        self.push_screen(screen, closed)
        self.runner.pause_then(command)

    def action_futures(self) -> None:
        cursor = self.snapshot.cursor if self.snapshot is not None else None
        where = "the end of the path" if cursor is None else f"before step {cursor + 1}"
        running: list[commands.Command] = []

        def start(n: int, new_tokens: int, outcome: str | None) -> None:
            command = commands.Futures(
                n,
                new_tokens,
                outcome,
                grown=lambda run: screen.post_message(messages.FuturesGrown(run)),
                done=lambda run: screen.post_message(messages.FuturesDone(run)),
                failed=lambda text: screen.post_message(messages.FuturesFailed(text)),
            )
            running[:] = [command]
            self.runner.pause_then(command)

        def cancel() -> None:
            for command in running:
                self.runner.drop(command)  # a batch running ends between two tokens

        def closed(node: int | None) -> None:
            cancel()
            if node is not None:
                self.enqueue(commands.Jump(node))

        screen = FuturesScreen(start, cancel, where)
        self.push_screen(screen, closed)

    def action_export(self) -> None:
        self.enqueue(commands.Export(self.export_dir, written=self._written))

    def action_export_tree(self) -> None:
        self.enqueue(commands.Export(self.export_dir, tree=True, written=self._written))

    def _written(self, paths: tuple[Path, ...]) -> None:
        self.post_message(messages.Written(paths))  # from the model thread

    @on(messages.Written)
    def _offer_downloads(self, message: messages.Written) -> None:
        """In a browser (tokenstep serve) the files an export wrote on the server are also offered as
        downloads, as the palette's Screenshot is."""
        if self.is_web:
            for path in message.paths:
                self.deliver_text(path, open_method="download")

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
            try:  # a new model gets a new session file: the old file keeps the old model's tree
                options, path = switched_model(self.load_options, model), self.session_path and new_session_path()
            except TokenstepError as error:
                self.notify(str(error), severity="error", markup=False)
                return
            self.load_options, self.session_path = options, path
            self.action_stop()
            if self.view is not None:  # the next model is steered as this one was
                self.steering = self.view.steering
            self.runner.explorer, self.view = None, None  # the old model goes once nothing holds it
            self.query_one("#main").display = False
            self.query_one(LoadingPane).start(f"Loading {self._model_name()}")
            plain = self.query_one("#prompt", Input).value
            self.load(self.load_options, Settings(self.strategy, self.choices), None if self.chat_mode else PromptRequest(plain))

        self.push_screen(AskScreen(MODEL_QUESTION, MODEL_EXAMPLE), chosen)

    @on(Input.Submitted, "#prompt")
    def new_prompt(self, event: Input.Submitted) -> None:
        self.action_stop()
        self.enqueue(commands.NewPrompt(self.query_one(PromptField).prompt_of(event.value)))

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
        text = self.query_one(MessageBox).take()
        if text is None:
            self.notify("The message is empty: type something to send.", severity="warning", markup=False)
            return
        self.action_stop()
        self.enqueue(commands.NewChat(text, self.system) if new else commands.Say(text, self.system))

    def action_force_text(self) -> None:
        def chosen(text: str | None) -> None:
            if text:
                self.runner.pause_then(commands.ForceText(text))

        self.push_screen(AskScreen("Text to force, token by token (a reply can start with it):", strip=False), chosen)

    @on(CandidatePanel.RowSelected)
    def row_clicked(self, event: CandidatePanel.RowSelected) -> None:
        self.action_pick(event.row)
