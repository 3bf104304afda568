"""The values that cross from the core to a view: frozen, plain Python, no torch.

A view (the terminal app) imports these without pulling in torch, so it can paint before the model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from decoding.core.settings import Strategy
from decoding.core.tokens import token_label


@dataclass(frozen=True)
class Candidate:
    """A possible next token. `prob`/`logprob` are the raw model's; `processed_prob` is after the
    strategy's processors (None when the strategy leaves the distribution as it is)."""

    token_id: int
    text: str  # the token's own text; bytes that are only part of a character show as <0xE2>
    prob: float
    logprob: float
    rank: int  # 0-based, in the whole raw distribution (ties broken by token id)
    processed_prob: float | None = None
    removed: bool = False  # a processor (top-k, top-p, n-gram blocking...) ruled it out
    special: bool = False  # a control token (<|im_end|>): shown by its name, in its own style
    ends: bool = False  # choosing it ends the generation (or a chat's turn)
    removed_by: str = ""  # "grammar" when the constraint forbids it
    # After the server's own sampler chain for the same settings (llama-server's post_sampling_probs);
    # None where the server did not say (not asked, or beyond the top N it returned)
    server_prob: float | None = None
    # While steering: the same model's probability without the steering vector (None: not steered,
    # or not read yet)
    unsteered_prob: float | None = None

    @property
    def label(self) -> str:
        """The text with whitespace visible and controls escaped, safe for any terminal."""
        return token_label(self.text)


@dataclass(frozen=True)
class Distribution:
    """The candidates on offer at one position, and how spread the distribution is."""

    candidates: tuple[Candidate, ...]  # best first; row 0 is always the greedy (raw argmax) token
    entropy: float  # of the raw distribution, in nats; on partial scores a lower bound
    processed_entropy: float | None  # after the processors, when they reshape it
    known: int | None = None  # partial scores: how many tokens the engine returned; None: all of them
    covered: float = 1.0  # the probability mass the known tokens hold
    nothing_left: str = ""  # why the strategy has no token to choose here ('' when it has), one line
    # When the strategy reshapes: how many tokens its chain keeps, the model's probability of them, of
    # how many (a session file keeps them; left out of equality, as a panel read back from an older
    # file is the same panel without them).
    kept: int | None = field(default=None, compare=False)
    kept_mass: float = field(default=1.0, compare=False)
    vocab_size: int = field(default=0, compare=False)
    server: str = field(default="", compare=False)  # what the server column is, or why there is none ('' : no server)

    @property
    def complete(self) -> bool:
        return self.known is None


@dataclass(frozen=True)
class PathToken:
    """A token on the chosen path, with what the raw model thought of it."""

    token_id: int
    text: str
    prob: float
    logprob: float
    rank: int | None  # 0-based, in the whole raw distribution; None: beyond the top N an engine returned
    forced: bool  # picked by the person rather than by the strategy
    processed_prob: float | None = None  # under the strategy's processors, when they reshape
    raw: bytes = field(default=b"", repr=False)  # the bytes it stands for (may be part of a character)
    piece: str = field(default="", repr=False)  # its share of the running text: the characters it completes
    special: bool = False  # a control token (<|im_end|>), not text that reads like one


@dataclass(frozen=True)
class TokenScore:
    """What a model thought of one token of the text, at the position before it."""

    logprob: float | None  # None: beyond the top N a partial engine returned, and not told apart
    rank: int | None  # 0-based, ties by id; None: beyond the top N a partial engine returned
    entropy: float  # of the distribution it was drawn from, in nats (a lower bound on partial scores)
    greedy: int  # the model's own most likely token there

    @property
    def prob(self) -> float | None:
        return None if self.logprob is None else math.exp(self.logprob)


@dataclass(frozen=True)
class PairScore:
    """Two models at one position of the same ids: what each thought of the token there."""

    first: TokenScore
    second: TokenScore
    kl: float | None  # KL(first || second) of their next-token distributions, nats; None on partial scores

    @property
    def difference(self) -> float | None:
        """The second model's log-probability of the token minus the first's."""
        if self.first.logprob is None or self.second.logprob is None:
            return None
        return self.second.logprob - self.first.logprob

    @property
    def agree(self) -> bool:
        """Whether the two models' most likely tokens there are the same."""
        return self.first.greedy == self.second.greedy


@dataclass(frozen=True)
class SecondView:
    """A second model along the same ids: its scores of the prompt's and the path's tokens."""

    model: str
    prompt: tuple[PairScore | None, ...]  # aligned with the prompt's ids (the first has none)
    path: tuple[PairScore | None, ...]  # aligned with the path's tokens
    note: str = ""  # why it stopped following, if it did (its context is shorter, say)

    @property
    def first_divergence(self) -> int | None:
        """The first path token where the two models' most likely choices differ (None: nowhere yet)."""
        return next((index for index, pair in enumerate(self.path) if pair is not None and not pair.agree), None)


@dataclass(frozen=True)
class Message:
    """One message of a chat: its role (system, user or assistant) and what it says."""

    role: str
    content: str


@dataclass(frozen=True)
class Segment:
    """A stretch of a prompt's text: a message's own words, or the chat template's scaffolding around
    them (role markers, control tokens), which a view dims."""

    text: str
    scaffold: bool = False


@dataclass(frozen=True)
class TurnMark:
    """A chat turn fed after path token `before - 1`: the next user message, framed by the template."""

    before: int  # how many path tokens come before it
    segments: tuple[Segment, ...]


ATTRIBUTION_METHODS = {"loo": "leave-one-out", "grad_x_input": "gradient × input", "ig": "integrated gradients"}


@dataclass(frozen=True)
class AttributionView:
    """How much each shown token of the context made `target` likely as path token `step` (its
    context: the prompt and the path before it; a chat's turns between are read but not shown)."""

    method: str  # "loo", "grad_x_input" or "ig"
    method_label: str  # "leave-one-out"
    target: str  # the candidate's label
    step: int  # 0-based: the path token the target was (or is) a candidate for
    prompt: tuple[float | None, ...]  # one per prompt token
    path: tuple[float | None, ...]  # one per path token before `step`
    completeness_gap: float | None = None  # integrated gradients'

    @property
    def largest(self) -> float:
        """The largest magnitude: the heat's bands are fractions of it."""
        return max((abs(v) for v in (*self.prompt, *self.path) if v is not None), default=0.0)


@dataclass(frozen=True)
class DraftMark:
    """How a draft model's proposal fared at one step of speculative decoding."""

    proposed: int  # the draft's token
    accepted: bool
    p_target: float  # the target's probability of it there (after the strategy's processors)
    q_draft: float  # the draft's


@dataclass(frozen=True)
class DraftView:
    """The draft at work: the last round's proposals, and how the draft has fared so far."""

    model: str
    tokens: int  # K, the proposals a round makes
    proposals: tuple[tuple[str, str, float | None, float | None], ...]  # (label, "accepted"|"rejected"|"pending"|"dropped", p, q)
    marks: tuple[DraftMark | None, ...]  # per path token: the proposal judged there (None: the target's own token)
    accepted: int  # proposals accepted so far
    judged: int  # proposals judged so far
    passes: int  # target passes the rounds made along the path
    taken: int  # path tokens the rounds gave
    note: str = ""  # why the draft sits out, if it does

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.judged if self.judged else None

    @property
    def tokens_per_pass(self) -> float | None:
        return self.taken / self.passes if self.passes else None


@dataclass(frozen=True)
class Snapshot:
    """Everything a view shows, frozen: safe to hand from the model's thread to the UI."""

    prompt: str
    path: tuple[PathToken, ...]
    pieces: tuple[str, ...]  # each path token's share of the running text (whole characters)
    distribution: Distribution | None
    finished: str | None
    strategy: Strategy
    choices: int
    prompt_segments: tuple[Segment, ...] = ()  # the prompt, its chat scaffolding apart (empty: the prompt as it is)
    turns: tuple[TurnMark, ...] = ()  # chat turns fed between path tokens
    chat: bool = False  # the prompt is a conversation rendered by the model's chat template
    panels: tuple[Distribution, ...] = ()  # the candidates on offer before each path token (stored)
    prompt_pieces: tuple[str, ...] = ()  # each prompt token's share of the prompt's text
    prompt_scores: tuple[TokenScore | None, ...] | None = None  # each prompt token's score; None: not scored (yet)
    cursor: int | None = None  # the past path token being looked at; None: the live end of the path
    second: SecondView | None = None  # a second model along the same path
    constraint: str | None = None  # a grammar's state: "in progress", "may end here", "complete"
    attribution: AttributionView | None = None  # the last attribution asked for, while its context stands
    steering: str = ""  # the steering applied, described ('' : none)
    draft: DraftView | None = None  # speculative decoding's draft at work

    def path_score(self, index: int) -> TokenScore:
        """Path token `index` as a TokenScore (its stored panel gives the entropy and the greedy token)."""
        token, panel = self.path[index], self.panels[index]
        return TokenScore(token.logprob, token.rank, panel.entropy, panel.candidates[0].token_id)

    @property
    def sequence_logprob(self) -> float:
        return sum(token.logprob for token in self.path)


@dataclass(frozen=True)
class Timing:
    """How fast the last command ran, for a status line."""

    latency_ms: float | None = None  # the last step's model time
    tokens_per_s: float | None = None  # while playing


@dataclass(frozen=True)
class Beam:
    """One beam-search hypothesis: a continuation of the prefix the search started from."""

    token_ids: tuple[int, ...]
    text: str  # the continuation, decoded as one sequence
    logprob: float  # sum of its tokens' log-probabilities under the raw model
    score: float  # what beam search ranks by: the sum of its tokens' processed log-probabilities
    penalised: float  # score / length ** length_penalty (generate()'s sequences_scores for a finished one)
    forced: int = 0  # how many of its tokens a person forced


@dataclass(frozen=True)
class BeamSnapshot:
    """A beam search between steps, frozen for a view."""

    prefix: str  # the text the search continues (prompt and path when it started)
    beams: tuple[Beam, ...]  # live beams, best score first
    candidates: tuple[Distribution, ...]  # candidates[i]: the next-token candidates of beams[i]
    finished: tuple[Beam, ...]  # finished hypotheses, best penalised score first
    steps: int
    ended: str | None  # why the search is over, in words; None while it can go on
    strategy: Strategy
    max_new_tokens: int

    @property
    def best(self) -> Beam | None:
        """What generate() would return now: the best finished hypothesis (at the end, always one)."""
        return self.finished[0] if self.finished else None


@dataclass(frozen=True)
class ProcessorEffect:
    """What one processor did to a step's candidates (`ProcessorReport.token_ids`, in that order)."""

    name: str  # its name in the sampler registry (decoding.core.samplers), or suppress_tokens, grammar
    before: tuple[float, ...]  # each candidate's probability going in (softmax of the scores so far)
    after: tuple[float, ...]  # and coming out
    removed: tuple[int, ...]  # candidates it ruled out (score set to -inf)
    changed: tuple[int, ...]  # candidates whose score it changed otherwise (a penalty, a rescaling)
    removed_in_all: int  # tokens of the whole vocabulary it ruled out
    mass_removed: float = 0.0  # the probability (going in) of the tokens it ruled out
    kept: int = 0  # tokens of the whole vocabulary still in after it
    kept_mass: float = 1.0  # the model's probability of those tokens
    by: str = ""  # whose code ran it, where not tokenstep's or transformers': "llama.cpp" (the engine's own sampler)


@dataclass(frozen=True)
class ProcessorReport:
    """The strategy's processors applied one by one to one step's scores, in generate()'s order."""

    token_ids: tuple[int, ...]  # the candidates followed: the step's panel
    effects: tuple[ProcessorEffect, ...]


@dataclass(frozen=True)
class LensLayer:
    top: tuple[tuple[int, str, float], ...]  # (token id, text, probability), best first
    ranks: tuple[int, ...]  # each tracked token's 0-based rank at this layer
    probs: tuple[float, ...]  # and its probability


@dataclass(frozen=True)
class Lens:
    """Per layer (row 0: the embeddings) the top tokens, and the tracked tokens' probability and rank:
    the chosen token first (the strategy's choice, or the token chosen at a past step), then the
    candidates of the panel, in the panel's order."""

    step: int | None  # the past step looked at (0-based), None: the next token
    tracked: tuple[tuple[int, str], ...]  # (token id, text)
    layers: tuple[LensLayer, ...]
    settles_at: int | None  # the first layer from which the final top-1 stays top-1
    note: str = ""  # why there is no lens
    pending: bool = False  # to be computed once the step's panel is out (a view keeps the last one)


@dataclass(frozen=True)
class ServerChain:
    """A server's probabilities after its own sampler chain, for the same settings as tokenstep's:
    of each token it listed (its top N after the chain); `complete` when that list holds every token
    the chain left (a token not in it was ruled out)."""

    probs: dict[int, float]
    complete: bool
