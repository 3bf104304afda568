"""Steering a transformers model: `scale * v` added to one decoder layer's output at every position.

The decoder layers are found by the model's own module list (the one ModuleList as long as the
config's layer count), not by name per family. A forward hook on each layer adds the vector only
while the engine that asked for it runs the model (a context variable says which): a fork of the
same engine, on the same weights, reads them unsteered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from transformers import PreTrainedModel

from decoding.core.errors import LoadError, SettingsError
from decoding.core.steering import Steering

# (layer index, the vector to add) while a steered engine runs its model
_ACTIVE: ContextVar[tuple[int, torch.Tensor] | None] = ContextVar("tokenstep_steering", default=None)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's decoder layers: its ModuleList with one entry per hidden layer."""
    count = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    found = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList) and len(module) == count]
    if len(found) != 1:
        raise SettingsError(f"{type(model).__name__}: its decoder layers could not be found, so it cannot be steered.")
    return found[0]


def _install(model: PreTrainedModel) -> None:
    """A hook on each decoder layer, once per model: it adds the active vector at its layer."""
    if getattr(model, "_tokenstep_steering_hooks", False):
        return
    for index, layer in enumerate(decoder_layers(model)):
        layer.register_forward_hook(lambda module, args, output, index=index: _added(index, output))
    setattr(model, "_tokenstep_steering_hooks", True)  # noqa: B010 (a module's attribute, set once)


def _added(index: int, output: torch.Tensor | tuple) -> torch.Tensor | tuple | None:
    active = _ACTIVE.get()
    if active is None or active[0] != index:
        return None  # the output as it is
    if isinstance(output, tuple):  # on the layer's own device (a device map may split the model)
        return (output[0] + active[1].to(output[0].device, output[0].dtype), *output[1:])
    return output + active[1].to(output.device, output.dtype)


@contextmanager
def applied(added: tuple[int, torch.Tensor] | None) -> Iterator[None]:
    """The model's passes within add this (layer, vector); None: none."""
    token = _ACTIVE.set(added)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def steering_vector(model: PreTrainedModel, encode, steering: Steering) -> tuple[int, torch.Tensor]:  # noqa: ANN001
    """(layer, scale * v) for the model, from the contrast pair or the file."""
    layers = decoder_layers(model)
    if not steering.layer < len(layers):
        raise SettingsError(f"--steer-layer {steering.layer}: the model has layers 0 to {len(layers) - 1}.")
    _install(model)
    hidden = int(model.config.hidden_size)
    if steering.vector_file:
        vector = _file_vector(Path(steering.vector_file), steering.layer, hidden)
    else:
        vector = _mean_output(model, encode(steering.toward), steering.layer) - _mean_output(
            model, encode(steering.away), steering.layer
        )
    return steering.layer, (steering.scale * vector).to(model.device)


def _mean_output(model: PreTrainedModel, ids: Sequence[int], layer: int) -> torch.Tensor:
    """The mean over positions of decoder layer `layer`'s output on `ids` (unsteered)."""
    if not ids:
        raise SettingsError("a steering text reads as no tokens at all.")
    kept: list[torch.Tensor] = []
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda module, args, output: kept.append((output[0] if isinstance(output, tuple) else output).detach())
    )
    try:
        with applied(None), torch.inference_mode():
            model(input_ids=torch.tensor([list(ids)], device=model.device), use_cache=False)
    finally:
        handle.remove()
    return kept[0][0].float().mean(dim=0)


def _file_vector(path: Path, layer: int, hidden: int) -> torch.Tensor:
    """One vector from a .safetensors file: its only tensor, or the one named for the layer."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise LoadError(f"--steer-vector {path}: not a readable .safetensors file ({error}).") from None
    named = [tensors[name] for name in (str(layer), f"layer.{layer}", f"layers.{layer}") if name in tensors]
    vectors = named or list(tensors.values())
    if len(vectors) != 1 or vectors[0].dim() != 1 or vectors[0].numel() != hidden:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in list(tensors.items())[:4])
        raise LoadError(
            f"--steer-vector {path}: expected one vector of {hidden} numbers (or one named {layer}); it holds {shapes}."
        )
    vector = vectors[0].float()
    if not bool(torch.isfinite(vector).all()):
        raise LoadError(f"--steer-vector {path}: the vector holds numbers that are not finite.")
    return vector
