"""Shared fixtures: a tiny random LLaVA built from a config in code (no network)."""

from __future__ import annotations

import numpy as np
import pytest

TINY_WORDS = ["a", "red", "blue", "circle", "square", "What", "is", "the", "shape", "USER", "ASSISTANT", "color"]


@pytest.fixture(scope="session")
def tiny_session():
    from neuronwidgets.model.session import Session
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(TINY_WORDS, image_size=32, patch_size=8)
    model = build_model(processor, image_size=32, patch_size=8, text_layers=3, intermediate=48, seed=0)
    return Session.from_model(model, processor, name="tiny-random-llava")


@pytest.fixture()
def rgb_image():
    return np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)


PROMPT = "USER: <image>\nWhat is the red shape? ASSISTANT:"
