"""Fold each batch's activations into the per-layer states, from inside the forward pass.

On a GPU each layer is reduced as soon as its activations exist (one LayerState per layer).
On a CPU the layers are reduced side by side: as the forward pass reaches a layer, its
batch tokens are gathered into a shared [B, J, layers, N] buffer, and after the group's last
layer one LayerState over all their neurons takes the batch. Every reduction is per neuron,
so the result is the same; but each torch operation has a fixed cost on a CPU, and a group of
four layers pays it once instead of four times.
"""

from __future__ import annotations

import torch

from neuronwidgets.reduce.gather import gather_tokens, trim_text
from neuronwidgets.reduce.scratch import SCRATCH
from neuronwidgets.reduce.state import LayerState

#: Most bytes of gathered tokens a group of layers may hold per batch.
GROUP_BUFFER_BYTES = 64 << 20


class BatchReducer:
    """The forward hook of a collection: `begin` a batch, then call with (layer, activations)."""

    def __init__(self, states: dict[int, LayerState], batch_size: int) -> None:
        self.layers = sorted(states)
        self._states = states
        self._groups: list[_LayerGroup] = []
        first = states[self.layers[0]]
        if first.sparse:
            per_layer = batch_size * (first.P + first.Tm) * first.n * 4
            size = max(1, GROUP_BUFFER_BYTES // max(per_layer, 1))
            self._groups = [_LayerGroup({layer: states[layer] for layer in self.layers[i : i + size]})
                            for i in range(0, len(self.layers), size)]
        self._group_of = {layer: g for g in self._groups for layer in g.layers}
        self._states = {layer: s for layer, s in states.items() if layer not in self._group_of}  # the groups hold the rest
        self._batch = None
        self._image_valid = None

    def begin(self, image_pos: torch.Tensor, text_pos: torch.Tensor, text_valid: torch.Tensor, samples: torch.Tensor,
              random_slots: list[tuple[int, int]], image_valid: torch.Tensor | None = None) -> None:
        """The next batch's token positions [B, P] and [B, Tm] (with validity), sample numbers [B] and random slots.

        image_valid [B, P]: the real image positions where samples hold fewer than P (None: all are real)."""
        text_pos, text_valid = trim_text(text_pos, text_valid)
        self._batch = (image_pos, text_pos, text_valid, samples, random_slots)
        self._image_valid = image_valid

    def __call__(self, layer: int, acts: torch.Tensor) -> None:
        group = self._group_of.get(layer)
        if group is None:  # the text was trimmed once for the batch in `begin`, not again per layer
            image_pos, text_pos, text_valid, samples, random_slots = self._batch
            state = self._states[layer]
            state.update_tokens(*state.gather(acts, image_pos, text_pos), text_valid, samples, random_slots, self._image_valid)
        else:
            group.add(layer, acts, *self._batch, image_valid=self._image_valid)

    def states(self) -> dict[int, LayerState]:
        """The exact per-layer states (on a CPU, views of the groups' arrays: read them before the next batch)."""
        out = dict(self._states)
        for group in self._groups:
            out.update(group.states())
        return out


class _LayerGroup:
    """Consecutive layers whose neurons one LayerState reduces side by side."""

    def __init__(self, states: dict[int, LayerState]):
        self.layers = sorted(states)
        self.sizes = [states[layer].n for layer in self.layers]
        if len(set(self.sizes)) > 1:
            raise ValueError(f"layers reduced side by side need the same number of neurons, got {self.sizes}")
        self.n = self.sizes[0]
        # one layer: its own state (a copy would double its memory: 240 MB at LLaVA's shape)
        self.state = states[self.layers[0]] if len(self.layers) == 1 else LayerState.concat([states[layer] for layer in self.layers])
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self._seen = 0
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, layer, acts, image_pos, text_pos, text_valid, samples, random_slots, image_valid=None) -> None:
        """Gather `layer`'s batch tokens into the group's buffers; after the last layer, fold them in."""
        L, n = len(self.layers), self.n
        if self._seen == 0:
            self._buffers = tuple(SCRATCH(f"group_{name}", (pos.numel(), L, n), acts.dtype, acts.device)
                                  for name, pos in (("img", image_pos), ("txt", text_pos)))
        slot = self._slot[layer]
        for buf, pos in zip(self._buffers, (image_pos, text_pos)):
            gather_tokens(acts, pos, buf[:, slot])
        self._seen += 1
        if self._seen == L:
            self._seen = 0
            B = samples.shape[0]
            img, txt = (buf.view(B, -1, L * n).float() for buf in self._buffers)
            self.state.update_tokens(img, txt, text_valid, samples, random_slots, image_valid)

    def states(self) -> dict[int, LayerState]:
        return dict(zip(self.layers, self.state.split(self.sizes)))
