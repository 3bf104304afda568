"""The one interface between a model and the rest of tokenstep, and what an engine may also be able to do.

Every engine tokenizes, runs new tokens after the ones it holds and returns the next position's
`Scores` (the whole vocabulary's logits, or only the top N log-probabilities), and forgets tokens past
a length. What only some engines can do is a small protocol of its own, checked at run time with
`isinstance`: setting cache entries aside (work ahead), a second cache (comparisons), several
sequences side by side (beam search), the log-probability of any one token (forcing outside the N).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from decoding.core.scores import Scores
    from decoding.core.settings import Strategy
    from decoding.core.state import ServerChain
    from decoding.core.steering import Steering


class Engine(Protocol):
    name: str  # as traces and session files record it: its entry's name in engines.registry
    model_id: str  # what the user asked for, shown in traces and the status line
    device: str
    dtype: str
    vocab_size: int  # width of the scores vector
    context_limit: int  # most tokens the model can attend to
    eos_token_ids: frozenset[int]  # where generate() stops
    end_of_turn_ids: frozenset[int]  # also end a chat reply (<|im_end|>, <|eot_id|>, <|endoftext|>...)
    special_ids: frozenset[int]  # control tokens: shown by name, never read from typed text
    weights_digest: str  # tells two checkpoints (or dtypes) apart: their numbers differ

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, as `generate()` would be given them."""
        ...

    def encode_piece(self, text: str) -> list[int]:
        """Token ids of text in the middle of a sequence (forced text, a reply's start): no BOS, and
        control tokens typed in it read as the characters they are."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence (multi-token characters come out whole)."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a UTF-8 character)."""
        ...

    @property
    def cached_length(self) -> int:
        """How many tokens the engine holds (its KV cache, or the ids it sends a server)."""
        ...

    def feed(self, ids: Sequence[int]) -> Scores:
        """Run `ids` after the held tokens; return the next position's scores. On failure the engine
        holds what it held before the call."""
        ...

    def crop(self, length: int) -> None:
        """Forget held tokens past `length` (no model work)."""
        ...


@runtime_checkable
class SetsAside(Protocol):
    """Can set the last cache entries aside and put them back with no model work (work ahead)."""

    def detach_last(self, count: int) -> object:
        """Remove the last `count` held tokens and return their cache entries, for `attach`."""
        ...

    def attach(self, tail: object) -> None:
        """Append cache entries returned by `detach_last`."""
        ...


@runtime_checkable
class FeedsAlternatives(Protocol):
    """Can score several one-token continuations of the held tokens at once (a server answers them
    concurrently), each set aside as `SetsAside.detach_last` would leave it."""

    def feed_alternatives(self, token_ids: Sequence[int]) -> list[tuple[Scores, object]]: ...


@runtime_checkable
class Forks(Protocol):
    """Can give the same model with a cache of its own (work beside a session: a comparison)."""

    def fork(self) -> Engine: ...


class Runner(Protocol):
    """Equal-length sequences stepped together on a cache of their own; each call returns one row of
    scores per sequence (a batched `Scores`)."""

    def start(self, sequences: list[list[int]]) -> Scores: ...

    def feed(self, token_ids: list[int]) -> Scores: ...

    def extend(self, rows: list[list[int]]) -> Scores:
        """Equal-length runs of new tokens, one per sequence (a shared prefix read once, then each
        row's own tokens after it); each row's last scores."""
        ...

    def reorder(self, rows: list[int]) -> None:
        """Row i of the cache becomes old row rows[i] (a beam continues from its parent)."""
        ...


@runtime_checkable
class RunsSideBySide(Protocol):
    """Can run several sequences side by side (beam search)."""

    def side_by_side(self) -> Runner: ...


@runtime_checkable
class RendersChats(Protocol):
    """Has a chat template (the model's own) to render a conversation into the text it was trained on."""

    def chat_template(self) -> str | None:
        """The template, or None when the model has none."""
        ...

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> tuple[str, list[int]]:
        """The conversation as the template renders it, and its token ids (control tokens a person typed
        in a message stay text)."""
        ...

    def encode_rendered(self, text: str) -> list[int]:
        """Token ids of template text (its control tokens read as control tokens, no BOS added)."""
        ...


@runtime_checkable
class ScoresPositions(Protocol):
    """Can give the distribution at every position of a sequence (heat views of the prompt, a second
    model's comparison) in chunks of rows of logits (float32, the whole vocabulary), leaving its cache
    as it was."""

    def score_positions(self, ids: Sequence[int]) -> Iterator[torch.Tensor]: ...


@runtime_checkable
class ReadsLayers(Protocol):
    """Can apply its final norm and unembedding to the residual stream after each layer (the logit
    lens). `keep_layers` asks each feed to keep its last position's layers, so that the lens of the
    next token costs no second forward while it is shown."""

    keep_layers: bool

    def lens_unavailable(self) -> str | None:
        """Why this model has no lens (no final norm or unembedding found); None when it has one."""
        ...

    def layer_logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        """[layers + 1, vocab] log-probabilities of the next token after `ids` (a prefix of what the
        cache holds), one row per layer, embeddings first; the last row is the model's own."""
        ...


@runtime_checkable
class ScoresAnyToken(Protocol):
    """An engine with partial scores that can still tell the log-probability of any one token at the
    position after the held tokens (a token forced outside the top N)."""

    def logprob_of(self, token_id: int) -> float: ...


@runtime_checkable
class FeedsEach(Protocol):
    """Can feed several tokens in one pass and give the scores after each (a draft checked at once)."""

    def feed_each(self, ids: Sequence[int]) -> list[Scores]: ...


@runtime_checkable
class AttributesByGradient(Protocol):
    """Can attribute a next token's log-probability to each context token through gradients (a
    model in this process, differentiable)."""

    def gradient_attribution(self, ids: Sequence[int], target: int, method: str, steps: int) -> tuple[list[float], float | None]:
        """One number per token of `ids`, and (integrated gradients) the completeness gap."""
        ...


@runtime_checkable
class Steers(Protocol):
    """Can add a steering vector to one of its layers' output (a model in this process)."""

    steering: Steering | None
    steerable_layers: int  # how many decoder layers a vector can be added to

    def steer(self, steering: Steering | None) -> None:
        """From now on (None: no more); its cache is emptied, to be read again."""
        ...


@runtime_checkable
class RunsOwnSamplers(Protocol):
    """Runs the stages of the sampler chain it has with its own code (llama.cpp's samplers), so that
    the numbers the chain view shows for them are the engine's."""

    def own_stage(self, name: str, strategy: Strategy) -> object | None:
        """Stage `name` of `strategy` as the engine's own processor (a LogitsProcessor with a `by`
        naming whose code it is); None for a stage it does not have."""
        ...


@runtime_checkable
class RunsChainBeside(Protocol):
    """A server that runs the sampler chain itself and says the probabilities after it
    (llama-server's post_sampling_probs), shown beside tokenstep's."""

    def chain_probs(self, ids: Sequence[int], strategy: Strategy) -> ServerChain | str | None:
        """After `ids`: the server's chain's probabilities, or one line saying why it cannot run this
        strategy as tokenstep does; None for a server that cannot tell."""
        ...


@runtime_checkable
class Interrupts(Protocol):
    """Waits on something outside (a server) that can be cut short from another thread."""

    def interrupt(self) -> None:
        """Make what waits now fail at once (a TokenstepError saying so); later calls are not affected."""
        ...


def decode_continuation(engine: Engine, prefix_ids: Sequence[int], ids: Sequence[int], prefix_text: str | None = None) -> str:
    """The text `ids` add after `prefix_ids`, decoded together with the prefix so a character split
    across the boundary comes out whole. `prefix_text`: the prefix decoded, if the caller has it."""
    prefix_text = engine.decode(prefix_ids) if prefix_text is None else prefix_text
    full = engine.decode(list(prefix_ids) + list(ids))
    return full[len(prefix_text) :] if full.startswith(prefix_text) else engine.decode(list(ids))
