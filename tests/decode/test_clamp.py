"""Clamping and ablating neurons: values set at every position, effects known on planted neurons, hooks cleaned up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronwidgets.decode import causal_score, clamp_sweep, decode_neurons, find_parts, next_token_logprobs
from neuronwidgets.model.intervene import ablate, clamp
from tests.conftest import PROMPT, TINY_WORDS
from tests.decode.helpers import count_hooks, plant_writer, prompts, tiny_llama

torch.set_num_threads(1)
LAYER, NEURON, TOKEN = 1, 7, 57
VALUES = [-0.2, 0.0, 0.02, 0.05, 0.1, 0.2, 0.4]  # from far below to near saturation (p -> 1 under the final norm)


def planted(mlp_bias: bool = False):
    """A tiny Llama whose neuron (1, 7) writes the unembedding direction of token 57; with a bias, up_proj(x)[7] = 1."""
    model = tiny_llama(seed=1, mlp_bias=mlp_bias)
    plant_writer(model, LAYER, NEURON, TOKEN)
    if mlp_bias:
        mlp = find_parts(model).layers[LAYER].mlp
        with torch.no_grad():
            mlp.up_proj.weight[NEURON] = 0.0
            mlp.up_proj.bias[NEURON] = 1.0
    return model


def record(model, layer: int, site: str):
    """A plain hook (registered after any clamp's) that keeps what the neuron site saw: a list of tensors."""
    mlp = find_parts(model).layers[layer].mlp
    seen = []
    if site == "act":
        handle = mlp.act_fn.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    else:
        handle = mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("site", ["act", "mlp_in"])
def test_clamp_sets_the_neuron_at_every_position_and_nothing_else(site):
    model = tiny_llama(seed=0)
    inp = prompts(1, length=9)[0]
    seen, h = record(model, 0, site)
    with torch.no_grad():
        model(**inp)
    free = seen.pop()
    with clamp(model, {(0, 3): 2.5, (0, 11): -1.0}, site=site), torch.no_grad():
        seen2, h2 = record(model, 0, site)
        model(**inp)
        h2.remove()
    h.remove()
    got = seen2[0]
    assert torch.all(got[..., 3] == 2.5) and torch.all(got[..., 11] == -1.0)
    others = [i for i in range(got.shape[-1]) if i not in (3, 11)]
    assert torch.equal(got[..., others], free[..., others])  # layer 0's other neurons see the same input


@pytest.mark.parametrize("site", ["act", "mlp_in"])
def test_clamping_a_planted_neuron_raises_its_token_monotonically(site):
    model = planted(mlp_bias=(site == "act"))
    sweep = clamp_sweep(model, prompts(3), LAYER, NEURON, VALUES, [TOKEN], site=site)
    probs = sweep["prob"].to_numpy()
    assert np.all(np.diff(probs) > 0), probs
    assert probs[-1] > 0.9 and probs[0] < 0.01


def test_act_and_mlp_in_agree_when_up_proj_is_one():
    model = planted(mlp_bias=True)
    inputs = prompts(2)
    a = next_token_logprobs(model, inputs, {(LAYER, NEURON): 3.0}, site="act")
    b = next_token_logprobs(model, inputs, {(LAYER, NEURON): 3.0}, site="mlp_in")
    assert torch.allclose(a, b, atol=1e-5)


def test_clamp_matches_a_hand_written_hook():
    model = planted()
    inputs = prompts(2)
    mlp = find_parts(model).layers[LAYER].mlp

    def hook(m, args):
        x = args[0].clone()
        x[..., NEURON] = 4.0
        return (x,)

    handle = mlp.down_proj.register_forward_pre_hook(hook)
    try:
        ref = next_token_logprobs(model, inputs)
    finally:
        handle.remove()
    assert torch.allclose(next_token_logprobs(model, inputs, {(LAYER, NEURON): 4.0}, site="mlp_in"), ref)


@pytest.mark.parametrize("site", ["act", "mlp_in"])
def test_hooks_are_gone_after_an_exception(site):
    model = tiny_llama(seed=0)
    before = count_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with clamp(model, {(0, 1): 1.0, (1, 2): "ablate"}, site=site):
            assert count_hooks(model) == before + 2
            raise RuntimeError("boom")
    assert count_hooks(model) == before
    free = next_token_logprobs(model, prompts(1))
    with clamp(model, {(1, 2): 5.0}, site=site):
        pass
    assert torch.equal(next_token_logprobs(model, prompts(1)), free)


def test_bad_neurons_and_values_are_clear_errors_and_leave_no_hook():
    model = tiny_llama(seed=0)
    before = count_hooks(model)
    cases = [
        ({(2, 0): 1.0}, IndexError, r"layer 2 does not exist: the model has layers 0\.\.1"),
        ({(0, 40): 1.0}, IndexError, r"neuron 40 does not exist in layer 0: it has neurons 0\.\.39"),
        ({(0, -1): 1.0}, IndexError, "neuron -1 does not exist"),
        ({3: 1.0}, TypeError, r"\(layer, neuron\) pair"),
        ({(0, 1.5): 1.0}, TypeError, "neuron must be a whole number"),
        ({(0, 1): "big"}, ValueError, "unknown clamp value 'big'"),
        ({(0, 1): float("nan")}, ValueError, "must be finite"),
        ({(0, 1): None}, TypeError, "must be a number"),
        ({(0, 1): 1.0, (1, 99): 2.0}, IndexError, "neuron 99"),
        ({(0, 1): "mean"}, KeyError, "holds no mean"),
    ]
    for spec, err, msg in cases:
        with pytest.raises(err, match=msg):
            with clamp(model, spec):
                pass
        assert count_hooks(model) == before
    with pytest.raises(ValueError, match="unknown neuron site 'mlp'"):
        with clamp(model, {(0, 1): 1.0}, site="mlp"):
            pass
    with pytest.raises(TypeError, match="mapping"):
        with clamp(model, [((0, 1), 1.0)]):
            pass


def test_ablate_zero_and_mean():
    model = tiny_llama(seed=0)
    inp = prompts(1)[0]
    with ablate(model, [(0, 4)]), torch.no_grad():
        seen, h = record(model, 0, "act")
        model(**inp)
        h.remove()
    assert torch.all(seen[0][..., 4] == 0)
    with ablate(find_parts(model).layers, [(0, 4), (1, 5)], means={(0, 4): 0.25, (1, 5): -0.5}) as spec, torch.no_grad():
        seen, h = record(model, 1, "act")
        model(**inp)
        h.remove()
    assert spec == {0: {4: 0.25}, 1: {5: -0.5}}
    assert torch.all(seen[0][..., 5] == -0.5)
    with ablate(model, (0, 4)) as spec:  # one bare pair
        assert spec == {0: {4: 0.0}}


def test_a_shared_act_fn_is_refused_at_site_act():
    model = tiny_llama(seed=0)
    layers = find_parts(model).layers
    layers[1].mlp.act_fn = layers[0].mlp.act_fn
    with pytest.raises(NotImplementedError, match="share one act_fn"):
        with clamp(model, {(1, 0): 1.0}):
            pass
    with clamp(model, {(1, 0): 1.0}, site="mlp_in"):
        pass


def test_causal_score_of_a_planted_neuron():
    model = planted()
    dec = decode_neurons(model, k=3, kinds=["writes"])
    inputs = prompts(3)
    result = causal_score(model, inputs, LAYER, NEURON, 8.0, decoding=dec, site="mlp_in")
    assert result.tokens[0] == TOKEN
    before = next_token_logprobs(model, inputs)
    after = next_token_logprobs(model, inputs, {(LAYER, NEURON): 8.0}, site="mlp_in")
    delta = after - before
    assert result.score == pytest.approx(float(delta[:, result.tokens].mean()), rel=1e-6)
    assert result.baseline == pytest.approx(float(delta.mean()), rel=1e-6)
    assert result.score > 1.0 and result.excess > 1.0
    assert result.suppressed_score < result.baseline
    assert len(result.per_token) == 3 * 3 and (result.per_token["delta"] > 0).any()
    other = causal_score(model, inputs, 0, 0, 8.0, tokens=[TOKEN], site="mlp_in")  # another neuron: no such rise
    assert other.score < result.score
    with pytest.raises(ValueError, match="give the tokens"):
        causal_score(model, inputs, LAYER, NEURON, 8.0)
    with pytest.raises(IndexError, match="neuron 40 does not exist"):
        causal_score(model, inputs, LAYER, 40, 8.0, tokens=[1])


def test_generation_under_a_clamp_on_a_tiny_llava():
    import neuronwidgets as nw
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(TINY_WORDS, image_size=32, patch_size=8)
    model = build_model(processor, image_size=32, patch_size=8, text_layers=2, intermediate=48, seed=0)
    session = nw.Session.from_model(model, processor)
    token = processor.tokenizer.convert_tokens_to_ids("\u2581circle")
    plant_writer(model, 1, 9, token)
    image = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    free = session.generate_ids([image], [PROMPT], max_new_tokens=4)[0]
    before = count_hooks(model)
    with clamp(model, {(1, 9): 50.0}, site="mlp_in"):
        forced = session.generate_ids([image], [PROMPT], max_new_tokens=4)[0]
    assert forced == [token] * 4  # every generation step, not only the prompt
    assert count_hooks(model) == before
    assert session.generate_ids([image], [PROMPT], max_new_tokens=4)[0] == free


def test_session_generate_takes_clamp_and_ablate():
    import neuronwidgets as nw
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(TINY_WORDS, image_size=32, patch_size=8)
    model = build_model(processor, image_size=32, patch_size=8, text_layers=2, intermediate=48, seed=0)
    session = nw.Session.from_model(model, processor)
    token = processor.tokenizer.convert_tokens_to_ids("\u2581square")
    plant_writer(model, 1, 9, token)
    image = np.random.default_rng(1).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    free = session.generate(image, PROMPT, max_new_tokens=3)
    before = count_hooks(model)
    assert session.generate(image, PROMPT, max_new_tokens=3, clamp={(1, 9): 50.0}, site="mlp_in") == "square square square"
    assert count_hooks(model) == before
    ablated = session.generate_ids([image], [PROMPT], max_new_tokens=3, ablate=[(1, 9)])
    with session.clamped(ablate=[(1, 9)]):
        assert session.generate_ids([image], [PROMPT], max_new_tokens=3) == ablated
    with session.clamped(ablate=[(1, 9)], means={(1, 9): 0.0}) as spec:
        assert spec == {1: {9: 0.0}}
    with pytest.raises(IndexError, match="neuron 48 does not exist in layer 1"):
        session.generate(image, PROMPT, clamp={(1, 48): 1.0})
    with pytest.raises(ValueError, match="both clamped and ablated"):
        session.generate(image, PROMPT, clamp={(1, 9): 1.0}, ablate=[(1, 9)])
    assert count_hooks(model) == before
    assert session.generate(image, PROMPT, max_new_tokens=3) == free
