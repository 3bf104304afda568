"""Every action a person can take, described once: the key bindings and the command palette are both
built from this table (and from the registered panels)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

from tui.panels import PANELS


@dataclass(frozen=True)
class Action:
    id: str  # the binding's id, so keys can be remapped with App.set_keymap
    action: str  # the app's action it runs, e.g. "pick(0)"
    label: str  # the footer's label and the palette's title
    help: str  # the tooltip and the palette's help
    keys: str | None = None  # None: in the palette only
    in_footer: bool = True
    key_display: str | None = None
    in_palette: bool = True


# The footer shows its actions in this order, cut where the terminal ends: the most needed first.
ACTIONS = (
    Action("step", "step", "Step", "One step by the current strategy", "space,right"),
    Action("pick.1", "pick(0)", "Pick", "Force-pick that row", "1", key_display="1-9", in_palette=False),
    *(
        Action(f"pick.{n}", f"pick({n - 1})", f"Pick row {n}", "Force-pick that row", str(n), in_footer=False, in_palette=False)
        for n in range(2, 10)
    ),
    Action("highlight.up", "highlight(-1)", "Highlight up", "Move the highlight", "up", in_footer=False, in_palette=False),
    Action("highlight.down", "highlight(1)", "Highlight down", "Move the highlight", "down", in_footer=False, in_palette=False),
    Action(
        "pick.highlighted",
        "pick_highlighted",
        "Pick highlighted",
        "Force-pick the highlighted row",
        "enter",
        in_footer=False,
        in_palette=False,
    ),
    Action("beam.down", "highlight_beam(1)", "Beam", "Highlight the next beam", "j", key_display="j/k", in_palette=False),
    Action("beam.up", "highlight_beam(-1)", "Beam up", "Highlight the previous beam", "k", in_footer=False, in_palette=False),
    Action("undo", "undo", "Undo", "Take back the last token", "backspace,left"),
    Action("play", "play", "Play", "Play / pause: keep stepping until the end, the limit or a key", "p"),
    Action(
        "settings",
        "settings",
        "Settings",
        "Strategy settings: greedy, sampling or beam search, temperature, top-k, top-p, seed",
        "s",
    ),
    Action(
        "heat",
        "heat",
        "Heat",
        "Tint the text by probability, entropy, rank, a second model's disagreement, an attribution, or not",
        "h",
    ),
    Action("quit", "quit", "Quit", "Leave tokenstep (ctrl+c too, outside a text field)", "q,ctrl+c"),
    Action("stop", "stop", "Stop", "Stop playing and drop queued steps", "escape"),
    Action(
        "settings.choices",
        "settings('choices')",
        "Set candidates shown (k)",
        "How many candidates the panel lists",
        in_footer=False,
    ),
    Action("switch.greedy", "switch('greedy')", "Switch to greedy", "Choose the most likely token"),
    Action("switch.sample", "switch('sample')", "Switch to sampling", "Draw from the (processed) distribution"),
    Action("switch.beam", "switch('beam')", "Switch to beam search", "Step all beams at once (settings: s)"),
    Action("compare", "compare", "Compare", "The chapter's strategies side by side from here", "c"),
    Action(
        "futures",
        "futures",
        "Futures",
        "Sample N continuations from here side by side, kept as branches, and see the outcomes they come to",
        "F",
        in_footer=False,
    ),
    *(Action(p.name, f"toggle_panel('{p.name}')", p.label, p.help, p.key, in_footer=p.in_footer) for p in PANELS),
    Action(
        "sibling.previous",
        "sibling(-1)",
        "Previous branch",
        "Go to the previous sibling branch",
        "left_square_bracket",
        in_footer=False,
    ),
    Action("sibling.next", "sibling(1)", "Next branch", "Go to the next sibling branch", "right_square_bracket", in_footer=False),
    Action(
        "cursor.back",
        "move_cursor(-1)",
        "Look back",
        "Look at the step before (its candidates, stored)",
        "comma",
        key_display=",/.",
    ),
    Action(
        "cursor.on",
        "move_cursor(1)",
        "Look forward",
        "Look at the step after; past the last, the live end",
        "full_stop",
        in_footer=False,
    ),
    Action(
        "attribute",
        "attribute",
        "Attribute",
        "Which earlier tokens made the highlighted candidate likely: a heat over the text (A: the method)",
        "a",
        in_footer=False,
    ),
    Action(
        "attribute.method",
        "attribution_method",
        "Attribution method",
        "Leave-one-out, gradient × input or integrated gradients (transformers), then attribute again",
        "A",
        in_footer=False,
    ),
    Action(
        "steering",
        "steering",
        "Steering",
        "Add a steering vector (a contrast pair or a file) to one layer while stepping",
        "S",
        in_footer=False,
    ),
    Action("steering.less", "nudge_steering(-1)", "Steer less", "The steering's scale down by 1", "minus", in_footer=False),
    Action(
        "steering.more", "nudge_steering(1)", "Steer more", "The steering's scale up by 1", "plus,equals_sign", in_footer=False
    ),
    Action("export", "export", "Export", "Save the path as JSON, CSV and Markdown traces", "e"),
    Action("export.tree", "export_tree", "Export tree", "Save every branch as JSON (a session file)", "E", in_footer=False),
    Action("whitespace", "toggle_whitespace", "Whitespace", "Show spaces and newlines as ␣ and ↵", "v", in_footer=False),
    Action("model", "choose_model", "Load another model", "A Hub id, folder or .gguf file", "m", in_footer=False),
    Action(
        "chat",
        "toggle_chat",
        "Chat / plain prompt",
        "The prompt box takes a chat message, or a plain prompt",
        "ctrl+t",
        in_footer=False,
    ),
    Action("send", "send", "Send message", "Send the message box: the conversation's next turn", "ctrl+s", in_footer=False),
    Action(
        "chat.new", "send(True)", "New conversation", "Start a new conversation from the message box", "ctrl+n", in_footer=False
    ),
    Action("force_text", "force_text", "Force text", "Force some text token by token (a reply's start)", "f", in_footer=False),
)


BEAM_ONLY, SINGLE_PATH_ONLY = {"highlight_beam"}, {"move_cursor"}


def available(action: str, *, beam: bool) -> bool:
    """The beam keys only while beam search runs, the cursor's only while it does not."""
    return not (action in BEAM_ONLY and not beam or action in SINGLE_PATH_ONLY and beam)


def bindings() -> list[Binding]:
    return [
        Binding(a.keys, a.action, a.label, show=a.in_footer, key_display=a.key_display, id=a.id, tooltip=a.help)
        for a in ACTIONS
        if a.keys is not None
    ]
