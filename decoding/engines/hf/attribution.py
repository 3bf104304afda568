"""Attribution by gradients on a transformers model: how much each context token's input embedding
moved the log-probability of a target next token.

- gradient x input: sum over the embedding's dimensions of d logp(target) / d e_i times e_i;
- integrated gradients (Captum's LayerIntegratedGradients over the embedding layer): the gradient
  averaged along the straight path from a baseline's embeddings to the context's, times their
  difference; its completeness gap says how far the attributions' sum is from
  logp(target | context) - logp(target | baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


def _target_logprob(model: PreTrainedModel, target: int):  # noqa: ANN202 (a closure Captum calls)
    def forward(input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)[:, target]

    return forward


def grad_x_input(model: PreTrainedModel, ids: Sequence[int], target: int) -> list[float]:
    """sum_d d logp(target) / d e_i[d] * e_i[d], for each context token i."""
    embeddings = model.get_input_embeddings()(torch.tensor([list(ids)], device=model.device)).detach()
    embeddings.requires_grad_(True)
    with torch.enable_grad():
        logprob = _target_logprob(model, target)(inputs_embeds=embeddings)
        (gradient,) = torch.autograd.grad(logprob.sum(), embeddings)
    return (gradient * embeddings).sum(dim=-1)[0].float().tolist()


def integrated_gradients(
    model: PreTrainedModel, ids: Sequence[int], target: int, steps: int, neutral: int
) -> tuple[list[float], float]:
    """Captum's layer integrated gradients over the embedding layer; the attributions and the
    completeness gap (relative to the difference they should add up to).

    The baseline keeps the context's first token and puts `neutral` everywhere else. The first
    position is the attention sink every later one leans on: moved along the path with the others, it
    makes the model's output jump (by 6 nats within a twentieth of the path, on the embedded model),
    and no number of steps then adds up to the difference. Kept, the path is smooth; the first
    token's own share is then 0."""
    from captum.attr import LayerIntegratedGradients  # type: ignore[import-untyped]  # imported when asked for: it pulls in matplotlib

    inputs = torch.tensor([list(ids)], device=model.device)
    baseline = torch.full_like(inputs, neutral)
    baseline[0, 0] = inputs[0, 0]
    method = LayerIntegratedGradients(_target_logprob(model, target), model.get_input_embeddings())
    with torch.enable_grad():
        attributions, delta = method.attribute(inputs, baselines=baseline, n_steps=steps, return_convergence_delta=True)
    with torch.inference_mode():
        forward = _target_logprob(model, target)
        difference = float(forward(input_ids=inputs) - forward(input_ids=baseline))
    gap = abs(float(delta)) / max(abs(difference), 1e-12)
    return attributions.sum(dim=-1)[0].float().tolist(), gap


def neutral_token(model: PreTrainedModel, special: frozenset[int]) -> int:
    """The token whose embedding is nearest the mean embedding (not a control token): a baseline that
    says nothing in particular, with an embedding of a usual size (a control token's may be near zero,
    where the model's norms are not smooth)."""
    with torch.inference_mode():
        weight = model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        embeddings = weight.float()
        distance = (embeddings - embeddings.mean(dim=0)).norm(dim=-1)
        distance[list(special)] = float("inf")
    return int(distance.argmin())
