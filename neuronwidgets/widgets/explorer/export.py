"""The explorer as a static page: its state plus snapshots of chosen (prompt, neuron) pairs, answered without a kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neuronwidgets.widgets.explorer.widget import NeuronExplorer


def export_state(explorer: NeuronExplorer, prompts: list[str] | None = None,
                 neurons: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The current state plus snapshots of (prompt, neuron) pairs, so the page answers those without a kernel."""
    state = explorer.get_state()
    prompts = list(dict.fromkeys([explorer.prompt, *(prompts if prompts is not None else explorer.prompts)]))
    neurons = list(dict.fromkeys([(explorer.layer, explorer.neuron), *((int(a), int(b)) for a, b in (neurons or []))]))
    snapshots, ok_prompts = [], []
    for layer, neuron in neurons:
        for p in prompts:
            try:
                panels = explorer.state_for(explorer.image_index, p, layer, neuron)
            except (ValueError, TypeError):
                continue  # a prompt the model cannot take is not offered
            snapshots.append({"layer": layer, "neuron": neuron, "prompt": p, "state": {**panels, "status": ""}})
            if p not in ok_prompts:
                ok_prompts.append(p)
    here = (explorer.layer, explorer.neuron, explorer.prompt)
    current = next((s for s in snapshots if (s["layer"], s["neuron"], s["prompt"]) == here), None)
    if current is not None:
        state.update(current["state"])
    state["_snapshots"] = snapshots
    state["prompts"] = ok_prompts
    state["images"] = [explorer.images[explorer.image_index]]
    state["image_index"] = 0
    state["seq"] = 0
    state["matches"] = [
        {"layer": a, "neuron": b, "category": explorer.category_of(a, b) or "",
         "text": str((explorer.explanation_row(a, b) or {}).get("text") or "")}
        for a, b in neurons
    ]
    return state
