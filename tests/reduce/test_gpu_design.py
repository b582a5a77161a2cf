"""The GPU's reduction design (dense, float16 as it comes), run on a CPU over a float16 model, gives the CPU design's index."""

import numpy as np
import pandas as pd
import pytest

from neuronwidgets.model.session import Session
from neuronwidgets.reduce.state import LayerState
from tests.collect.test_collect import KW, make_data
from tests.conftest import TINY_WORDS


@pytest.fixture(scope="module")
def half_session():
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(TINY_WORDS, image_size=32, patch_size=8)
    model = build_model(processor, image_size=32, patch_size=8, text_layers=3, intermediate=48, seed=0).half()
    return Session.from_model(model, processor, name="tiny-random-llava-fp16")


def test_gpu_design_on_a_float16_model_gives_the_cpu_designs_index(half_session, monkeypatch, tmp_path):
    data = make_data()
    cpu = half_session.collect(data, path=tmp_path / "cpu", **KW)
    configure = LayerState._configure

    def as_on_a_gpu(self, *args):
        configure(self, *args)
        self.set_design(sparse=False, keep_dtype=True)

    monkeypatch.setattr(LayerState, "_configure", as_on_a_gpu)
    gpu = half_session.collect(data, path=tmp_path / "gpu", **KW)
    assert gpu.manifest["random_samples"] == cpu.manifest["random_samples"]
    for layer in cpu.layers:
        a, b = cpu._layer(layer), gpu._layer(layer)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"layer {layer} {k}")
    pd.testing.assert_frame_equal(gpu.stats(), cpu.stats(), rtol=1e-6, atol=1e-6)
