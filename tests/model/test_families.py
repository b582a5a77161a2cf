"""The VLM families beyond LLaVA-1.5, on tiny random models built from configs with processors made offline.

Per family (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, LLaVA-OneVision, Gemma 3, Idefics3, SmolVLM, InternVL):
the image tokens and each image's grid are what the family's processor and model produce (checked
against the processor's own outputs and against the model's own code: Qwen's M-RoPE positions,
LLaVA-NeXT's pack_image_features, Gemma 3's pooling, Idefics3's and InternVL's pixel shuffle); every recorded
neuron equals a plain forward hook on the same module over the processor's own batch; collect
handles a patch count that varies per sample (its statistics equal a brute force over traces);
categories, heatmaps and the explorer work; the datasets' LLaVA-1.5 prompts read as each family's own.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image

from neuronwidgets.datasets.base import Sample
from neuronwidgets.model.adapters.layout import MAIN_VIEW, NEWLINE
from neuronwidgets.model.session import Session
from neuronwidgets.toy.families import FAMILIES, LLAVA_PATCH, TILE

NEEDS_NUM2WORDS = {"smolvlm"}  # SmolVLMProcessor imports num2words


def _params(names=tuple(FAMILIES)):
    out = []
    for name in names:
        marks = []
        if name in NEEDS_NUM2WORDS and importlib.util.find_spec("num2words") is None:
            marks.append(pytest.mark.skip(reason="SmolVLMProcessor needs the num2words package"))
        out.append(pytest.param(name, marks=marks))
    return out


#: Image sizes (width, height): wide, tall, square, very wide; every family gives them different grids.
SIZES = [(64, 40), (30, 90), (50, 50), (120, 36)]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


_SESSIONS: dict[str, Session] = {}


def session_of(name: str) -> Session:
    if name not in _SESSIONS:
        torch.set_num_threads(1)
        model, processor = FAMILIES[name]()
        _SESSIONS[name] = Session.from_model(model, processor, name=f"tiny-{name}")
    return _SESSIONS[name]


def prompt_of(session: Session, question: str = "what is the red shape?") -> str:
    return session.adapter.prompt_template.format(question=question)


def processor_batch(session: Session, images: list, prompts: list[str]) -> dict:
    """The family's own processor over a batch (one list of images per prompt), as a user would call it."""
    return session.processor(images=[list(ims) for ims in images], text=prompts, return_tensors="pt", padding=True)


# --- the grid: what the processor and the model make -------------------------------------------
def _qwen_reference(session, image):
    """Qwen2-VL: image_grid_thw over the merge size; rows and cols from the model's own M-RoPE positions."""
    model = session.model
    enc = processor_batch(session, [[image]], [prompt_of(session)])
    t, h, w = enc["image_grid_thw"][0].tolist()
    m = model.config.vision_config.spatial_merge_size
    pos, _ = model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], enc["image_grid_thw"],
                                        attention_mask=enc["attention_mask"])
    img = (enc["input_ids"][0] == model.config.image_token_id).nonzero().view(-1)
    start = pos[0, 0, img[0]]
    return enc, (h // m, w // m), (pos[1, 0, img] - start).numpy(), (pos[2, 0, img] - start).numpy(), None


def _llava_next_reference(session, image):
    """LLaVA-NeXT / OneVision: the model's pack_image_features over features that carry their tile, row and col."""
    model = session.model
    cfg = model.config
    enc = processor_batch(session, [[image]], [prompt_of(session)])
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    n_tiles = int(image_size_to_num_patches(enc["image_sizes"][0], cfg.image_grid_pinpoints, cfg.vision_config.image_size))
    feats = torch.zeros(n_tiles, side * side, 4)
    k = torch.arange(side * side)
    for tile in range(n_tiles):
        feats[tile, :, 0], feats[tile, :, 1], feats[tile, :, 2], feats[tile, :, 3] = tile, k // side, k % side, 1.0
    newline = torch.full((4,), -1.0)
    if type(model).__name__.startswith("LlavaOnevision"):
        packed, _ = model.model.pack_image_features([feats], enc["image_sizes"][:1], image_newline=newline,
                                                    vision_aspect_ratio=cfg.vision_aspect_ratio)
    else:
        packed, _ = model.model.pack_image_features([feats], enc["image_sizes"][:1], cfg.vision_feature_select_strategy,
                                                    image_newline=newline)
    packed = packed[0]
    is_newline = (packed[:, 3] == -1).numpy()
    after_base = np.arange(len(packed)) >= side * side
    if not torch.equal(packed[:, :3], packed[:, :3].round()):  # OneVision shrank the grid (bilinear): read it from the newlines
        hires = after_base & ~is_newline
        n_rows = int(is_newline.sum())
        n_cols = int(hires.sum()) // n_rows
        j = np.arange(int(hires.sum()))
        rows, cols = np.full(len(packed), -1), np.full(len(packed), -1)
        rows[hires], cols[hires] = j // n_cols, j % n_cols
        assert (np.flatnonzero(is_newline) - side * side + 1).tolist() == [(r + 1) * (n_cols + 1) for r in range(n_rows)]
        return enc, (n_rows, n_cols), rows, cols, is_newline
    height, width = enc["image_sizes"][0].tolist()
    best_h, best_w = select_best_resolution([height, width], cfg.image_grid_pinpoints)
    tiles_across = best_w // cfg.vision_config.image_size
    rows = np.full(len(packed), -1)
    cols = np.full(len(packed), -1)
    hires = ~is_newline & after_base
    tile = packed[:, 0].long().numpy() - 1
    rows[hires] = (tile[hires] // tiles_across) * side + packed[hires, 1].long().numpy()
    cols[hires] = (tile[hires] % tiles_across) * side + packed[hires, 2].long().numpy()
    # the unpadded grid starts where the padding was cut: rows/cols relative to its first token
    if hires.any():
        rows[hires] -= rows[hires].min()
        cols[hires] -= cols[hires].min()
    grid = (int(rows[hires].max()) + 1, int(cols[hires].max()) + 1) if hires.any() else None
    return enc, grid, rows, cols, is_newline


def _gemma_reference(session, image):
    """Gemma 3: the projector's average pool over features that carry their patch's row and col."""
    model = session.model
    enc = processor_batch(session, [[image]], [prompt_of(session)])
    proj = model.model.multi_modal_projector
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    x = torch.zeros(1, 2, side, side)
    x[0, 0] = torch.arange(side)[:, None].float()
    x[0, 1] = torch.arange(side)[None, :].float()
    pooled = proj.avg_pool(x).flatten(2).transpose(1, 2)[0]  # [tokens, 2] in token order
    kk = proj.kernel_size
    rows = ((pooled[:, 0] - (kk - 1) / 2) / kk).round().long().numpy()
    cols = ((pooled[:, 1] - (kk - 1) / 2) / kk).round().long().numpy()
    per_side = int(math.isqrt(model.config.mm_tokens_per_image))
    return enc, (per_side, per_side), rows, cols, None


def _idefics_reference(session, image):
    """Idefics3 / SmolVLM: rows x cols tiles from the image processor; token order from the connector's pixel shuffle."""
    model = session.model
    enc = processor_batch(session, [[image]], [prompt_of(session)])
    info = session.processor.image_processor(images=[[image]], return_row_col_info=True)
    tiles_down, tiles_across = info["rows"][0][0], info["cols"][0][0]
    cfg = model.config
    patches = cfg.vision_config.image_size // cfg.vision_config.patch_size
    x = torch.zeros(1, patches * patches, 2)
    k = torch.arange(patches * patches)
    x[0, :, 0], x[0, :, 1] = k // patches, k % patches
    shuffled = model.model.connector.pixel_shuffle(x, cfg.scale_factor)[0]  # [tokens, 2 * s^2]: first group = top-left patch
    s = cfg.scale_factor
    tile_rows, tile_cols = (shuffled[:, 0] / s).long().numpy(), (shuffled[:, 1] / s).long().numpy()
    side = patches // s
    rows, cols = [], []
    if tiles_down:  # tiles row-major, then the global view (its rows/cols are not on the grid)
        for tr in range(tiles_down):
            for tc in range(tiles_across):
                rows += list(tr * side + tile_rows)
                cols += list(tc * side + tile_cols)
        rows += [-1] * side * side
        cols += [-1] * side * side
        grid = (tiles_down * side, tiles_across * side)
    else:
        rows, cols, grid = list(tile_rows), list(tile_cols), (side, side)
    return enc, grid, np.asarray(rows), np.asarray(cols), None


def _internvl_reference(session, image):
    """InternVL: each tile's place on the canvas read from the processor's own tiles of a picture whose red channel
    grows with x and green with y (the thumbnail spans the whole picture, last); token order within a tile from the
    model's own pixel shuffle of the vision tower's row-major patches; tiles' tokens in pixel_values order (masked_scatter)."""
    model = session.model
    cfg = model.config
    enc = processor_batch(session, [[image]], [prompt_of(session)])
    w, h = image.size
    ramp = np.zeros((h, w, 3), np.uint8)
    ramp[..., 0] = np.round(np.linspace(0, 255, w))[None, :]
    ramp[..., 1] = np.round(np.linspace(0, 255, h))[:, None]
    tiles = processor_batch(session, [[Image.fromarray(ramp)]], [prompt_of(session)])["pixel_values"]
    assert tiles.shape == enc["pixel_values"].shape
    red_lo, red_hi = tiles[:, 0].amin((1, 2)), tiles[:, 0].amax((1, 2))
    green_lo, green_hi = tiles[:, 1].amin((1, 2)), tiles[:, 1].amax((1, 2))
    n = len(tiles)
    whole = (red_hi - red_lo > 1.5) & (green_hi - green_lo > 1.5)  # spans (nearly) all of -1..1: the whole picture
    if n > 1:
        assert whole[-1] and not whole[:-1].any()  # the thumbnail, last
    crops = n - 1 if n > 1 else 1
    xs = sorted(set(np.round(red_lo[:crops].numpy(), 3)))
    ys = sorted(set(np.round(green_lo[:crops].numpy(), 3)))
    tile_col = [xs.index(v) for v in np.round(red_lo[:crops].numpy(), 3)]
    tile_row = [ys.index(v) for v in np.round(green_lo[:crops].numpy(), 3)]
    assert sorted(zip(tile_row, tile_col)) == [(r, c) for r in range(len(ys)) for c in range(len(xs))]  # a full canvas
    size = cfg.vision_config.image_size[0] // cfg.vision_config.patch_size[0]
    x = torch.zeros(1, size, size, 2)
    x[0, :, :, 0] = torch.arange(size)[:, None].float()
    x[0, :, :, 1] = torch.arange(size)[None, :].float()
    shuffled = model.model.pixel_shuffle(x, scale_factor=cfg.downsample_ratio)
    shuffled = shuffled.reshape(-1, shuffled.shape[-1])  # [tokens, 2 / ratio^2]: the first group = the top-left patch
    scale = int(round(1 / cfg.downsample_ratio))
    in_row, in_col = (shuffled[:, 0] / scale).long().numpy(), (shuffled[:, 1] / scale).long().numpy()
    side = size // scale
    rows, cols = [], []
    for r, c in zip(tile_row, tile_col):
        rows += list(r * side + in_row)
        cols += list(c * side + in_col)
    if n > 1:
        rows += [-1] * side * side
        cols += [-1] * side * side
    return enc, (len(ys) * side, len(xs) * side), np.asarray(rows), np.asarray(cols), None


REFERENCES = {"qwen2-vl": _qwen_reference, "qwen2.5-vl": _qwen_reference, "llava-next": _llava_next_reference,
              "llava-onevision": _llava_next_reference, "gemma3": _gemma_reference, "idefics3": _idefics_reference,
              "smolvlm": _idefics_reference, "internvl": _internvl_reference}


@pytest.mark.parametrize("name", _params())
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_image_tokens_and_grid_are_the_familys_own(name, size):
    session = session_of(name)
    image = picture(*size)
    enc, grid, rows, cols, newline = REFERENCES[name](session, image)
    image_id = session.adapter.image_token_id
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].numpy()
    trace = session.trace(image, prompt_of(session), layers=[0])
    tok = trace.tokens
    # the same token ids and image positions as the family's own processor
    np.testing.assert_array_equal(tok["token_id"].to_numpy(), ids)
    np.testing.assert_array_equal(np.flatnonzero(tok["modality"] == "image"), np.flatnonzero(ids == image_id))
    assert session.adapter.count_image_tokens(image) == int((ids == image_id).sum())
    assert trace.grid == grid
    img = tok[tok["modality"] == "image"]
    if newline is not None:  # LLaVA-NeXT's row ends
        np.testing.assert_array_equal(img["view"].to_numpy() == NEWLINE, newline)
    on_ref_grid = rows >= 0
    np.testing.assert_array_equal(img["row"].to_numpy()[on_ref_grid], rows[on_ref_grid])
    np.testing.assert_array_equal(img["col"].to_numpy()[on_ref_grid], cols[on_ref_grid])
    # exactly the grid's cells, each once, and the rest of the image tokens off it
    main = img[img["view"] == MAIN_VIEW]
    assert len(main) == grid[0] * grid[1]
    assert sorted(zip(main["row"], main["col"])) == [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    assert (img.loc[img["view"] != MAIN_VIEW, "row"] == -1).all()
    assert trace.image_map(0, 3).shape == grid
    assert not np.isnan(trace.image_map(0, 3)).any()


def test_qwen_grid_follows_image_grid_thw():
    session = session_of("qwen2-vl")
    for size in SIZES:
        enc = processor_batch(session, [[picture(*size)]], [prompt_of(session)])
        t, h, w = enc["image_grid_thw"][0].tolist()
        assert session.trace(picture(*size), prompt_of(session), layers=[0]).grid == (h // 2, w // 2)


def test_llava_next_views_base_grid_and_newlines():
    session = session_of("llava-next")
    trace = session.trace(picture(64, 40), prompt_of(session), layers=[0])
    img = trace.tokens[trace.tokens["modality"] == "image"]
    side = TILE // LLAVA_PATCH
    views = img["view"].tolist()
    assert views[: side * side] == ["base"] * side * side  # the base view first, then grid rows each ended by a newline
    rows, cols = trace.grid
    assert views[side * side :] == ([MAIN_VIEW] * cols + [NEWLINE]) * rows
    base = img[img["view"] == "base"]
    assert sorted(zip(base["view_row"], base["view_col"])) == [(r, c) for r in range(side) for c in range(side)]
    assert trace.grid == (6, 8)  # the tiny model's pinpoints give 64x40 two tiles side by side, cut to 6 rows


def test_gemma3_pan_and_scan_crops_are_views_of_their_own():
    model, processor = FAMILIES["gemma3"]()
    session = Session.from_model(model, processor)
    session.adapter.processor_kwargs = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8, "pan_and_scan_max_num_crops": 3}
    image = picture(200, 40)
    trace = session.trace(image, prompt_of(session), layers=[0])
    enc = session.processor(images=[[image]], text=[prompt_of(session)], return_tensors="pt", **session.adapter.processor_kwargs)
    crops = session.processor.image_processor(images=[[image]], do_pan_and_scan=True, pan_and_scan_min_crop_size=8,
                                               pan_and_scan_max_num_crops=3, pan_and_scan_min_ratio_to_activate=1.2)["num_crops"]
    n_crops = int(np.asarray(crops).sum())
    assert n_crops > 0
    np.testing.assert_array_equal(trace.tokens["token_id"].to_numpy(), enc["input_ids"][0].numpy())
    views = trace.tokens.loc[trace.tokens["modality"] == "image", "view"].tolist()
    assert views == [MAIN_VIEW] * 16 + [v for k in range(1, n_crops + 1) for v in [f"crop{k}"] * 16]
    assert trace.grid == (4, 4) and session.adapter.count_image_tokens(image) == 16 * (1 + n_crops)
    assert "Here is the original image" in session.tokenizer.decode(enc["input_ids"][0])


@pytest.mark.parametrize("name", _params(["idefics3"]))
def test_processor_kwargs_reach_every_processor_call(name):
    model, processor = FAMILIES[name]()
    session = Session.from_model(model, processor)
    session.adapter.processor_kwargs = {"do_image_splitting": False}
    image = picture(64, 40)
    trace = session.trace(image, prompt_of(session), layers=[0])
    views = set(trace.tokens.loc[trace.tokens["modality"] == "image", "view"])
    assert views == {MAIN_VIEW} and trace.grid == (4, 4)  # the global view alone is the grid
    assert session.adapter.count_image_tokens(image) == 16
    assert isinstance(session.generate(image, prompt_of(session), max_new_tokens=2), str)


def test_internvl_tiles_then_a_thumbnail_between_its_image_tags():
    session = session_of("internvl")
    image = picture(64, 40)
    trace = session.trace(image, prompt_of(session), layers=[0])
    tok = trace.tokens
    img = tok[tok["modality"] == "image"]
    assert trace.grid == (8, 12)  # 64x40 (aspect 1.6) on the tiny model's 6 tiles at most: a 3 x 2 canvas of 4x4 tokens
    assert img["view"].tolist() == [MAIN_VIEW] * 6 * 16 + ["thumbnail"] * 16
    first, last = int(img["position"].min()), int(img["position"].max())
    assert tok["token"][first - 1] == "<img>" and tok["token"][last + 1] == "</img>"
    assert (np.diff(img["position"]) == 1).all()  # no tags between the tiles
    thumb = img[img["view"] == "thumbnail"]
    assert sorted(zip(thumb["view_row"], thumb["view_col"])) == [(r, c) for r in range(4) for c in range(4)]
    # a small image is one tile, no thumbnail; crop_to_patches=False: always one tile
    assert session.trace(picture(20, 20), prompt_of(session), layers=[0]).grid == (4, 4)
    model, processor = FAMILIES["internvl"]()
    alone = Session.from_model(model, processor)
    alone.adapter.processor_kwargs = {"crop_to_patches": False}
    one = alone.trace(image, prompt_of(alone), layers=[0])
    assert one.grid == (4, 4) and set(one.tokens.loc[one.tokens["modality"] == "image", "view"]) == {MAIN_VIEW}
    assert alone.adapter.count_image_tokens(image) == 16


@pytest.mark.parametrize("name", _params())
def test_several_images_in_one_prompt(name):
    session = session_of(name)
    ph = session.adapter.image_placeholder
    prompt = prompt_of(session).replace(ph, f"{ph} and {ph}", 1)
    a, b = picture(64, 40), picture(30, 90, 1)
    trace = session.trace([a, b], prompt, layers=[0])
    enc = processor_batch(session, [[a, b]], [prompt])
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].numpy()
    np.testing.assert_array_equal(trace.tokens["token_id"].to_numpy(), ids)
    assert len(trace.grids) == 2
    single = [session.trace(im, prompt_of(session), layers=[0]).grid for im in (a, b)]
    if name != "llava-onevision":  # OneVision reads several images without tiles: their base views are their grids
        assert trace.grids == single
    img = trace.tokens[trace.tokens["modality"] == "image"]
    assert set(img["image"]) == {0, 1}
    for i in (0, 1):
        assert trace.image_map(0, 1, image=i).shape == trace.grids[i]
    with pytest.raises(ValueError, match="once per image"):
        session.trace([a, b], prompt_of(session))


# --- neurons: equal to a plain forward hook --------------------------------------------------------
def _hooked(session, enc: dict, site: str) -> dict[int, torch.Tensor]:
    """Each decoder layer's neurons from the model over the processor's batch, with plain hooks."""
    got, handles = {}, []
    for i, layer in enumerate(session.adapter.decoder_layers()):
        mlp = layer.mlp
        if site == "act":
            handles.append(mlp.act_fn.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o.detach().clone())))
        else:
            handles.append(mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[0].detach().clone())))
    try:
        with torch.no_grad():
            session.model(**enc, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("name", _params())
@pytest.mark.parametrize("site", ["act", "mlp_in"])
def test_recorded_neurons_equal_a_plain_forward_hook(name, site):
    session = session_of(name)
    images = [picture(*size, seed=i) for i, size in enumerate(SIZES)]
    prompts = [prompt_of(session)] * len(images)
    traces = session.trace_batch(images, prompts, site=site)
    enc = processor_batch(session, [[im] for im in images], prompts)
    hooked = _hooked(session, dict(enc), site)
    for b, trace in enumerate(traces):
        real = enc["attention_mask"][b].bool()
        for layer in range(session.n_layers):
            np.testing.assert_allclose(trace.activations(layer), hooked[layer][b][real].numpy(), atol=2e-5, rtol=0,
                                       err_msg=f"{name} sample {b} layer {layer}")
    # batched == one at a time
    alone = session.trace(images[1], prompts[1], site=site)
    np.testing.assert_allclose(traces[1].activations(1), alone.activations(1), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", _params(["qwen2-vl", "gemma3", "idefics3", "internvl"]))
def test_a_continuation_is_text_after_the_prompt(name):
    session = session_of(name)
    trace = session.trace(picture(64, 40), prompt_of(session), continuation="a red circle")
    tok = trace.tokens
    cont = tok[tok["part"] == "continuation"]
    assert len(cont) > 0 and (cont["modality"] == "text").all()
    enc = session.encode(picture(64, 40), prompt_of(session), "a red circle")
    for types in enc.token_types.values():
        assert len(types) == len(enc.input_ids) and not any(types[enc.n_prompt :])


# --- collect, categories, widgets ---------------------------------------------------------------
def _data(session, n: int = 4) -> list[Sample]:
    return [Sample(id=f"s{i}", image=picture(*SIZES[i % len(SIZES)], seed=i), prompt=prompt_of(session), caption="a red circle")
            for i in range(n)]


@pytest.mark.parametrize("name", _params())
def test_collect_keeps_each_samples_grid_and_equals_a_brute_force(name, tmp_path):
    import neuronwidgets as nw

    session = session_of(name)
    data = _data(session)
    index = session.collect(data, top_k=3, token_k=5, random_k=2, text="caption", batch_size=2, progress=False, path=tmp_path / "run")
    traces = [session.trace(s.image, s.prompt, continuation=s.caption) for s in data]
    counts = [int((t.tokens["modality"] == "image").sum()) for t in traces]
    assert index.manifest["grid"] is None and index.manifest["n_patches"] == max(counts)
    assert index.manifest["crop"] is False
    assert [index.grid_of(i) for i in range(len(data))] == [t.grid for t in traces]
    assert index.samples["n_image_tokens"].tolist() == counts
    with pytest.raises(ValueError, match="varies per sample"):
        index.grid  # noqa: B018
    stats = index.stats()
    for layer in index.layers:
        image = np.concatenate([t.activations(layer)[t.image_positions] for t in traces])
        row = stats[stats.layer == layer].set_index("neuron")
        np.testing.assert_array_equal(row["image_count"].to_numpy(), len(image))
        np.testing.assert_allclose(row["image_max"].to_numpy(), image.max(0), rtol=1e-6)
        np.testing.assert_allclose(row["image_mean"].to_numpy(), image.mean(0), rtol=1e-4, atol=1e-6)
    # exemplars: each top image token's value is the trace's at its sample, row and col
    for neuron in (0, 7):
        ex = index.exemplars(1, neuron, "image")
        for s, r, c, v in zip(ex["sample"], ex["row"], ex["col"], ex["activation"]):
            if r >= 0:
                assert traces[s].image_map(1, neuron)[r, c] == pytest.approx(v, rel=1e-5)
        best = stats[(stats.layer == 1) & (stats.neuron == neuron)]["image_max"].iloc[0]
        assert ex["activation"].iloc[0] == pytest.approx(best, rel=1e-6)
        for rec in index.records(1, neuron):
            assert rec.patch_map.shape == traces[rec.sample].grid
            real = traces[rec.sample].image_map(1, neuron)
            level = 10 if index.manifest["map_bits"] == 4 else 255
            step = max(rec.activation, 0) / level * 1.5 + 1e-6
            assert np.all(np.abs(rec.patch_map - np.clip(real, 0, None)) <= step + 1e-6)
    cats = index.categories()
    assert len(cats) == index.n_neurons * len(index.layers)
    assert set(cats["category"]) <= {"visual", "text", "multi-modal", "inactive", "unactivated"}
    loaded = nw.NeuronIndex.load(tmp_path / "run")
    assert loaded.grid_of(1) == traces[1].grid
    nw.PatchHeatmap(traces[0], layer=1, neuron=3, index=index)
    nw.TokenHeatmap(traces[0], layer=1, neuron=3)
    nw.NeuronExplorer(session, index, dataset=data, simulator=None)


@pytest.mark.parametrize("name", _params(["qwen2-vl", "llava-next", "gemma3", "idefics3", "internvl"]))
def test_collect_reads_the_models_own_answers(name):
    session = session_of(name)
    data = _data(session, 3)
    index = session.collect(data, top_k=2, random_k=1, text="generate", max_text_tokens=4, batch_size=2, progress=False)
    answers = session.generate_ids([s.image for s in data], [s.prompt for s in data], max_new_tokens=4)
    assert [list(ids) for ids in index.samples["text_token_ids"]] == answers
    assert len(index.categories()) == index.n_neurons * len(index.layers)


def test_collect_on_the_gpu_design_gives_the_cpu_designs_index(monkeypatch, tmp_path):
    """Padding of the variable patch lists is masked the same on the dense (GPU) path as on the sparse (CPU) path."""
    from neuronwidgets.reduce.state import LayerState

    session = session_of("llava-next")
    data = _data(session)
    kw = dict(top_k=3, token_k=5, random_k=2, text="caption", batch_size=2, progress=False)
    cpu = session.collect(data, path=tmp_path / "cpu", **kw)
    configure = LayerState._configure

    def as_on_a_gpu(self, *args):
        configure(self, *args)
        self.set_design(sparse=False, keep_dtype=True)

    monkeypatch.setattr(LayerState, "_configure", as_on_a_gpu)
    gpu = session.collect(data, path=tmp_path / "gpu", **kw)
    for layer in cpu.layers:
        a, b = cpu._layer(layer), gpu._layer(layer)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"layer {layer} {k}")


def test_max_patches_too_small_is_a_clear_error():
    session = session_of("qwen2-vl")
    with pytest.raises(ValueError, match="max_patches"):
        session.collect(_data(session), top_k=2, text="caption", progress=False, max_patches=4)


# --- loading -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_from_pretrained_loads_a_saved_family_checkpoint(name, tmp_path):
    session = session_of(name)
    session.model.save_pretrained(tmp_path)
    session.processor.save_pretrained(tmp_path)
    loaded = Session.from_pretrained(tmp_path, device="cpu")
    assert type(loaded.model).__name__ == type(session.model).__name__
    assert type(loaded.adapter) is type(session.adapter)
    image = picture(64, 40)
    a = session.trace(image, prompt_of(session), layers=[1])
    b = loaded.trace(image, prompt_of(loaded), layers=[1])
    assert a.grid == b.grid
    np.testing.assert_allclose(a.activations(1), b.activations(1), atol=1e-5)
    assert isinstance(loaded.generate(image, prompt_of(loaded), max_new_tokens=3), str)


def test_the_llava_path_keeps_its_fixed_grid(tiny_session, rgb_image):
    from tests.conftest import PROMPT

    assert tiny_session.adapter.fixed_grid and tiny_session.grid == (4, 4)
    trace = tiny_session.trace(rgb_image, PROMPT)
    img = trace.tokens[trace.tokens["modality"] == "image"]
    assert (img["view"] == MAIN_VIEW).all() and (img["image"] == 0).all()
    k = np.arange(16)
    np.testing.assert_array_equal(img["row"], k // 4)
    np.testing.assert_array_equal(img["col"], k % 4)


# --- prompts: the datasets' LLaVA-1.5 prompts read as each family's own ------------------------------------
LLAVA_PROMPT = "USER: <image>\nwhat is the red shape? ASSISTANT:"


@pytest.mark.parametrize("name", _params())
def test_a_llava_prompt_reads_as_the_familys_own_template(name):
    session = session_of(name)
    own = prompt_of(session, "what is the red shape?")
    assert (own == LLAVA_PROMPT) == (name == "llava-next")  # the tiny LLaVA-NeXT's (Vicuna) template is LLaVA-1.5's: kept
    assert session.adapter.adapt_prompt(LLAVA_PROMPT) == own
    image = picture(64, 40)
    assert session.encode(image, LLAVA_PROMPT).input_ids == session.encode(image, own).input_ids
    ids = processor_batch(session, [[image]], [own])["input_ids"][0].tolist()  # the family's processor on its own template
    assert session.encode(image, LLAVA_PROMPT).input_ids == ids
    trace = session.trace(image, LLAVA_PROMPT, layers=[0])
    assert trace.prompt == own and trace.tokens["token_id"].tolist() == ids
    np.testing.assert_array_equal(trace.activations(0), session.trace(image, own, layers=[0]).activations(0))
    assert session.generate_ids([image], [LLAVA_PROMPT], max_new_tokens=3) == session.generate_ids([image], [own], max_new_tokens=3)
    assert isinstance(session.generate(image, LLAVA_PROMPT, max_new_tokens=2), str)
    assert session.check_prompt(LLAVA_PROMPT) == own


@pytest.mark.parametrize("name", _params())
def test_collect_over_shapes_with_the_default_prompts(name):
    import neuronwidgets as nw

    session = session_of(name)
    data = nw.datasets.shapes(n=8, seed=0)
    assert data[0].prompt.startswith("USER: <image>\n")  # LLaVA-1.5's, as every dataset's default
    index = session.collect(data, top_k=2, random_k=1, max_text_tokens=3, batch_size=4, progress=False)
    assert len(index.samples) == 8
    own = [session.adapter.adapt_prompt(s.prompt) for s in data]
    assert all((p == s.prompt) == (name == "llava-next") for p, s in zip(own, data))
    answers = session.generate_ids([s.image for s in data], own, max_new_tokens=3)  # the model's answers to its own template
    assert [list(ids) for ids in index.samples["text_token_ids"]] == answers
    counts = [int((session.trace(s.image, p, layers=[0]).tokens["modality"] == "image").sum()) for s, p in zip(data, own)]
    assert index.samples["n_image_tokens"].tolist() == counts
    qa = data[0].qa[0].prompt  # a question's prompt reads the same way
    assert session.trace(data[0].image, qa, layers=[0]).prompt == prompt_of(session, data[0].qa[0].question)


@pytest.mark.parametrize("name", _params())
def test_a_prompt_in_another_form_is_used_as_given(name):
    session = session_of(name)
    adapt = session.adapter.adapt_prompt
    own = prompt_of(session)
    assert adapt(own) == own  # the family's own format: untouched
    ph = session.adapter.image_placeholder
    two = own.replace(ph, f"{ph} and {ph}", 1)
    assert adapt(two) == two
    for other in ("USER: <image>\nwhat? ASSISTANT: a red", " USER: <image>\nwhat? ASSISTANT:", "USER: <image>\n<image>\nwhat? ASSISTANT:",
                  "<image>\nwhat is it?", "what is it?"):
        assert adapt(other) == other  # not exactly LLaVA-1.5's template around one question
    if ph != "<image>":  # so it reaches the model as it is, and lacks this family's placeholder
        with pytest.raises(ValueError, match="does not contain the image placeholder"):
            session.trace(picture(64, 40), "USER: <image>\nwhat? ASSISTANT: a red")


@pytest.mark.parametrize("name", _params())
def test_a_prompt_without_a_placeholder_is_a_clear_error(name):
    session = session_of(name)
    ph = session.adapter.image_placeholder
    for call in (lambda p: session.trace(picture(64, 40), p), lambda p: session.generate(picture(64, 40), p, max_new_tokens=2),
                 lambda p: session.collect([Sample(id="x", image=picture(64, 40), prompt=p, caption="a")], top_k=1, random_k=1,
                                           text="caption", progress=False)):
        with pytest.raises(ValueError, match="does not contain the image placeholder") as err:
            call("what is the red shape?")
        assert repr(ph) in str(err.value) and repr(prompt_of(session, "What is in the image?")) in str(err.value)
        assert ("rewritten" in str(err.value)) == (name != "llava-next")  # it says a LLaVA-1.5 prompt would do too


def test_the_llava_path_keeps_its_prompts(tiny_session):
    from tests.conftest import PROMPT

    assert tiny_session.adapter.adapt_prompt(PROMPT) == PROMPT
    assert tiny_session.check_prompt(PROMPT) == PROMPT
    with pytest.raises(ValueError, match="does not contain the image placeholder") as err:
        tiny_session.check_prompt("what is it?")
    assert "rewritten" not in str(err.value)


@pytest.mark.parametrize("name", _params(["qwen2-vl", "internvl"]))
def test_the_command_lines_llava_prompt_works_on_a_family(name, tmp_path):
    from neuronwidgets.cli import main
    from neuronwidgets.store.index import NeuronIndex

    session = session_of(name)
    session.model.save_pretrained(tmp_path / "model")
    session.processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    code = main(["collect", "--model", str(tmp_path / "model"), "--device", "cpu", "--data", "shapes:n=3,seed=0", "--out", str(out),
                 "--prompt", LLAVA_PROMPT, "--text", "prompt", "--top-k", "2", "--random-k", "1", "--batch-size", "2"])
    assert code == 0
    index = NeuronIndex.load(out)
    data = __import__("neuronwidgets").datasets.shapes(n=3, seed=0)
    enc = session.encode(data[0].image, prompt_of(session))  # what the model read: the family's own template
    special = set(session.tokenizer.all_special_ids)
    text = [t for t in enc.input_ids if t != session.adapter.image_token_id and t not in special]
    assert list(index.samples["text_token_ids"][0]) == text
