"""The heat views' colours: four tints, from confident (or agreeing) to surprised (or apart).

Light to import: the command line names the palettes before anything loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual.theme import Theme

# Colours of the xterm cube, each its own colour in 256 and in 16 colours too (as Rich downsamples
# them): ANSI names would take the theme's colours, where yellow is orange and red is magenta.
TINTS = ("#5fd75f", "#ffd75f", "#d75f00", "#ff5f5f")
# For colour-blind eyes: blue to vermillion (Okabe and Ito's hues, as the xterm cube has them), told
# apart by hue along the blue-yellow axis and by lightness, and apart in 256 and 16 colours too.
COLOUR_BLIND_TINTS = ("#0087ff", "#5fd7ff", "#ffd700", "#ff5f00")
HEAT_COLOURS = ("classic", "theme", "colour-blind")


def heat_tints(colours: str, theme: Theme) -> tuple[str, ...]:
    """The four tints of a heat palette: classic, colour-blind, or the theme's own (its success and
    warning colours, its error colour, and halfway between the last two)."""
    if colours == "colour-blind":
        return COLOUR_BLIND_TINTS
    if colours != "theme":
        return TINTS
    from textual.color import Color

    success, warning, error = (
        Color.parse(value or fallback)
        for value, fallback in zip((theme.success, theme.warning, theme.error), TINTS[:2] + TINTS[3:])
    )
    return (success.hex, warning.hex, warning.blend(error, 0.5).hex, error.hex)
