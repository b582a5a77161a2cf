"""render: overlays, exemplars, labelled patch grids, PNG bytes, token lists and escaped HTML."""

from __future__ import annotations

import numpy as np
from PIL import Image

from neuronwidgets import records, render


def _image(w=32, h=32, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 200, (h, w, 3), dtype=np.uint8))


def test_white_overlay_keeps_active_patches_and_fades_the_rest():
    img = _image()
    levels = np.array([[10, 0], [5, 0]])
    out = np.asarray(render.overlay(img, levels), np.float64)
    px = np.asarray(img, np.float64)
    assert out.shape == px.shape
    assert np.array_equal(out[:16, :16], px[:16, :16])  # level 10: the pixel itself
    assert (out[:16, 16:] == 255).all()  # level 0: white
    assert np.allclose(out[16:, :16], np.round(255 + (px[16:, :16] - 255) * 0.5), atol=1)


def test_heat_overlay_and_exemplar_side_by_side():
    img = _image()
    heat = render.overlay(img, np.full((4, 4), 7), style="heat")
    assert heat.size == img.size and not np.array_equal(np.asarray(heat), np.asarray(img))
    pic = render.exemplar(img, np.arange(16, dtype=float).reshape(4, 4), max_value=15.0, min_side=100)
    assert pic.height == 130 and pic.width == 2 * 130 + 6  # upscaled by a whole factor (4), framed, plus the gap
    left = np.asarray(pic)[1:129, 1:129]
    assert np.array_equal(left[::4, ::4], np.asarray(img))  # the plain image, unchanged


def test_model_view_crops_the_centre_square():
    img = Image.new("RGB", (60, 40), (0, 0, 0))
    img.paste((255, 0, 0), (10, 0, 50, 40))
    view = render.model_view(img)
    assert view.size == (40, 40) and np.asarray(view)[..., 0].min() == 255


def test_patch_grid_is_labelled_and_big_enough():
    grid = render.patch_grid(_image(), 4, 4, min_side=200)
    assert min(grid.size) > 200
    magenta = (np.asarray(grid) == [255, 0, 255]).all(-1)
    assert magenta.sum() > 4 * 200  # grid lines drawn
    dark = (np.asarray(grid)[:20, 40:] < 80).all(-1).sum()
    assert dark > 0  # column numbers in the top margin


def test_png_is_deterministic_and_a_data_url():
    img = _image()
    assert render.png_bytes(img) == render.png_bytes(img.copy())
    assert render.png_bytes(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert render.data_url(img).startswith("data:image/png;base64,")


def test_token_lines_and_one_discretisation():
    levels = records.discretize([0.0, 2.5, 5.0, -1.0], 5.0)
    assert render.discretize is records.discretize
    assert levels.tolist() == [0, 5, 10, 0]
    text = render.token_lines(["a", " red\n", "\tx", "b\\n"], levels)
    assert text.splitlines() == ["a\t0", " red\\n\t5", "\\tx\t10", "b\\\\n\t0"]


def test_tokens_html_escapes_everything():
    out = render.tokens_html(['<script>alert("x")</script>', "a&b", " ok"], [10, 3, 0])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&quot;x&quot;" in out and "a&amp;b" in out
    assert out.count('class="nw-token"') == 3 and 'title="10"' in out
