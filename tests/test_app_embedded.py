"""The explorer on the real embedded SmolLM2-135M, as `make run` opens it."""

import pytest

from decoding.engines.registry import LoadOptions
from tests.test_app import SIZE, panel_ids, settle, text_on_screen
from tui.app import TokenstepApp

pytestmark = pytest.mark.embedded


async def test_first_panel_then_space_takes_the_argmax_and_2_the_runner_up(embedded_engine):
    app = TokenstepApp(LoadOptions(device="cpu"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=3000)
        first = app.snapshot.distribution.candidates
        assert panel_ids(app) == [c.token_id for c in first] and len(first) == 10
        assert first[0].text == " most"  # SmolLM2's favourite after "Transformers are the"
        await pilot.press("space")
        await settle(pilot)
        assert app.snapshot.path[0].token_id == first[0].token_id
        runner_up = app.snapshot.distribution.candidates[1]
        await pilot.press("2")
        await settle(pilot)
        assert (app.snapshot.path[1].token_id, app.snapshot.path[1].forced) == (runner_up.token_id, True)
        assert text_on_screen(app) == "Transformers are the most" + runner_up.text
