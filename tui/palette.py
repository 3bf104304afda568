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
            yield DiscoveryHit(action.label, partial(self.app.run_action, action.action), help=self._help(action))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action in palette_actions():
            score = matcher.match(action.label)
            if score > 0:
                run = partial(self.app.run_action, action.action)
                yield Hit(score, matcher.highlight(action.label), run, help=self._help(action))

    def _help(self, action: Action) -> str:
        """What the action does, and its keys as they are now (the user's keymap's, else its own)."""
        keys_for = getattr(self.app, "keys_for", lambda binding, default: default)
        keys = keys_for(action.id, action.keys)
        return f"{action.help} · key: {keys.replace(',', ' or ')}" if keys else action.help
