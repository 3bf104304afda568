"""llama-server's own sampler chain beside tokenstep's: the strategy's stages sent as the fields of a
/completion request, in the chain's order, and the probabilities after the server's chain read back
(`post_sampling_probs`), so the panel can show both for the same settings.

Each stage's fields come from its entry in the sampler registry (`Sampler.server`). Only what the
server would compute the same way is asked: a stage it lacks (epsilon and eta cutoffs, n-gram
blocking, tokenstep's grammars), a coin it draws itself (XTC below probability 1), a state it
restarts at every request (mirostat's mu) or two stages it runs as one with different settings get
one line saying why there is no server column instead.
"""

from __future__ import annotations

from typing import Any

from decoding.core.samplers import SAMPLERS

HELD_BACK_TRIES = 4  # seeds tried when the token the server drew ends in a partial character
SEEDS = 2**32 - 1  # llama-server's seeds (2**32 - 1 itself means "a random one")


def request_fields(strategy: Any, context_length: int) -> dict[str, Any] | str:
    """The /completion fields that give llama-server this strategy's chain, or one line saying why
    the server cannot run it as tokenstep does."""
    names = strategy.active_processors()
    lacking = [name.replace("_", " ") for name in names if name not in SAMPLERS or SAMPLERS[name].server is None]
    if strategy.constraint is not None:
        lacking.append(f"{strategy.constraint.name} (tokenstep's)")
    if lacking:
        return f"llama-server's chain has no {', '.join(lacking)}"
    fields: dict[str, Any] = {}
    order: list[str] = []
    for name in names:
        sampler = SAMPLERS[name]
        assert sampler.server is not None
        given = sampler.server(strategy, context_length)
        if isinstance(given, str):
            return given
        stage = sampler.server_stage or sampler.chain_name
        shared = [key for key in given if key in fields and fields[key] != given[key]]
        if shared or (stage in order and order[-1] != stage):
            return (
                f"llama-server runs {stage} as one stage, with one {shared[0] if shared else 'place in the chain'}: "
                "set its stages alike (for the penalties, --repeat-last-n -1) and next to each other"
            )
        fields.update(given)
        order += [] if stage in order else [stage]
    return {"samplers": order, "min_keep": 1, "seed": strategy.seed % SEEDS, **fields}
