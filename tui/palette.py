"""The command palette's one provider: every action of `tui.actions`, titled and described as there."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.actions import ACTIONS, Action


def palette_actions() -> list[Action]:
    return [action for action in ACTIONS if action.in_palette]


class ActionCommands(Provider):
    async def discover(self) -> Hits:
        for action in palette_actions():
            yield DiscoveryHit(action.label, partial(self.app.run_action, action.action), help=action.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action in palette_actions():
            score = matcher.match(action.label)
            if score > 0:
                yield Hit(score, matcher.highlight(action.label), partial(self.app.run_action, action.action), help=action.help)
