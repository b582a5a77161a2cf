"""Tiny random models of the VLM families neuronwidgets supports, with processors made offline.

For tests, benchmarks and trying an adapter without a download: each `build_<family>()` returns
(model, processor) with a few-layer language model (hidden 64), a small vision tower and a word-level
tokenizer holding the family's special tokens. The weights are random: the neurons mean nothing,
but every shape, token and grid is the family's own.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable

import torch

from neuronwidgets.model.loading import image_only

SPACE = "\u2581"
WORDS = ("what is the a an of in image picture describe shape colour color red green blue yellow circle square "
         "triangle left right top bottom above below and there").split()
_CHARACTERS = list(string.ascii_letters + string.digits + string.punctuation) + ["\n"]
_BYTES = [f"<0x{b:02X}>" for b in range(256)]

#: The language models' shape: small enough that a forward pass takes milliseconds on a CPU.
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)


def build_tokenizer(specials: Iterable[str], *, words: Iterable[str] = WORDS, bos: str | None = None, eos: str | None = None,
                    pad: str | None = None, add_bos: bool = False, extra: dict[str, str] | None = None):
    """A word-level fast tokenizer with byte fallback whose special tokens are `specials` (plus <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>"] + [s for s in specials if s != "<unk>"]
    vocab: dict[str, int] = {}

    def add(piece: str) -> None:
        vocab.setdefault(piece, len(vocab))

    for piece in specials + _BYTES + [SPACE] + _CHARACTERS:
        add(piece)
    merges, seen = [], set()
    for ch in _CHARACTERS:
        add(SPACE + ch)
        merges.append((SPACE, ch))
        seen.add((SPACE, ch))
    for word in sorted(set(words)):
        piece = SPACE + word[0]
        for ch in word[1:]:
            pair = (piece, ch)
            piece += ch
            add(ch)
            add(piece)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token=pad,
                                   extra_special_tokens=extra or {}, add_bos_token=add_bos, padding_side="right")


def chat_template(user: str, image: str, end: str, assistant: str) -> str:
    """A Jinja chat template: `user`, the image text per image, the text, `end`; `assistant` opens the answer."""
    return ("{% for m in messages %}{% if m['role'] == 'user' %}" + user + "{% else %}" + assistant + "{% endif %}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image + "{% elif c['type'] == 'text' %}{{ c['text'] }}"
            "{% endif %}{% endfor %}" + end + "{% endfor %}{% if add_generation_prompt %}" + assistant + "{% endif %}")


def _model(config, seed: int):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config).eval()


def _text(tok, model_type: str | None = None, **kw) -> dict:
    out = dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw)
    if model_type:
        out["model_type"] = model_type
    return out


# --- Qwen2-VL / Qwen2.5-VL ------------------------------------------------------------
def build_qwen2_vl(version: str = "2", *, patch: int = 8, min_pixels: int = 16 * 16 * 4, max_pixels: int = 16 * 16 * 24, seed: int = 0,
                   text: dict | None = None, vision: dict | None = None):
    """Tiny Qwen2-VL (version "2") or Qwen2.5-VL ("2.5"): patches of `patch` px merged 2x2, so 16 px per token.

    text / vision: config entries that replace the tiny ones (a benchmark builds a real checkpoint's shape)."""
    text_overrides, vision_overrides = text or {}, vision or {}
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = build_tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>",
                          extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    images = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=2, temporal_patch_size=2)
    template = chat_template("<|im_start|>user\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", "<|im_start|>assistant\n")
    processor = image_only(Qwen2VLProcessor)(image_processor=images, tokenizer=tok, chat_template=template)
    vision = dict(depth=2, hidden_size=32, num_heads=2, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2.5":
        cls = Qwen2_5_VLConfig
        vision = dict(vision, intermediate_size=64, out_hidden_size=TEXT["hidden_size"], window_size=4 * patch, fullatt_block_indexes=[1])
    elif version == "2":
        cls, vision = Qwen2VLConfig, dict(vision, embed_dim=32, hidden_size=TEXT["hidden_size"])
    else:
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    vision = {**vision, **vision_overrides}
    shape = dict(TEXT, **text_overrides)
    head = shape["hidden_size"] // shape["num_attention_heads"]
    mrope = [head // 8, (head // 2 - head // 8) // 2, head // 2 - head // 8 - (head // 2 - head // 8) // 2]
    text = {**_text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}), **text_overrides}
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>", "vision_start_token_id": "<|vision_start|>",
             "vision_end_token_id": "<|vision_end|>"}
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in names.items()}
    return _model(cls(text_config=text, vision_config=vision, **ids), seed), processor


# --- LLaVA-NeXT / LLaVA-OneVision ---------------------------------------------------------
TILE, LLAVA_PATCH = 32, 8
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def build_llava_next(*, seed: int = 0):
    """Tiny LLaVA-NeXT: CLIP tiles of 32 px (4x4 patches), anyres pinpoints up to 2x2 / 3x1 tiles, a Llama LM."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = build_tokenizer(["<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>", add_bos=True,
                          extra={"image_token": "<image>"})
    images = LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                        image_grid_pinpoints=PINPOINTS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=LLAVA_PATCH, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=chat_template("USER: ", "<image>\n", " ", "ASSISTANT:"))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
                              patch_size=LLAVA_PATCH, projection_dim=32)
    config = LlavaNextConfig(vision_config=vision, text_config=_text(tok, "llama", num_key_value_heads=4),
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    return _model(config, seed), processor


def build_llava_onevision(*, max_tiles: int = 2, seed: int = 0):
    """Tiny LLaVA-OneVision: SigLIP tiles of 32 px, anyres_max_`max_tiles` (larger grids are shrunk), a Qwen2 LM."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], eos="<|im_end|>", pad="<|endoftext|>",
                          extra={"image_token": "<image>", "video_token": "<video>"})
    images = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS,
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
    side = TILE // LLAVA_PATCH
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=images, tokenizer=tok, num_image_tokens=side * side, vision_feature_select_strategy="full",
        vision_aspect_ratio=f"anyres_max_{max_tiles}",
        chat_template=chat_template("<|im_start|>user ", "<image>\n", "<|im_end|>", "<|im_start|>assistant\n"))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
                                patch_size=LLAVA_PATCH, vision_use_head=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=_text(tok, "qwen2"),
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=PINPOINTS,
                                  vision_aspect_ratio=f"anyres_max_{max_tiles}", vision_feature_select_strategy="full")
    return _model(config, seed), processor


# --- Gemma 3 ------------------------------------------------------------------------------
def build_gemma3(*, image_size: int = 32, patch: int = 4, tokens_per_side: int = 4, seed: int = 0):
    """Tiny Gemma 3: a SigLIP tower on 32 px images (8x8 patches) average-pooled to 4x4 = 16 soft tokens per image."""
    from transformers import Gemma3Config, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = build_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                          extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    images = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                     do_pan_and_scan=False)
    template = chat_template("<start_of_turn>user\n", "<start_of_image>", "<end_of_turn>\n", "<start_of_turn>model\n")
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=tokens_per_side**2, chat_template=template)
    head = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = _text(tok, head_dim=head, query_pre_attn_scalar=head, sliding_window=64)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                patch_size=patch, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_side**2, boi_token_index=tok.boi_token_id,
                          eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"), image_token_index=tok.image_token_id)
    return _model(config, seed), processor


# --- Idefics3 / SmolVLM -------------------------------------------------------------------------
def build_idefics3(kind: str = "idefics3", *, tile: int = 32, patch: int = 4, longest_edge: int = 96, scale: int = 2, seed: int = 0,
                   text: dict | None = None, vision: dict | None = None):
    """Tiny Idefics3 or SmolVLM (kind "smolvlm"): images resized to at most `longest_edge` px and split into 32 px tiles
    (8x8 patches, pixel-shuffled 2x2 to 4x4 = 16 tokens each) plus a global view; a Llama LM.

    text / vision: config entries that replace the tiny ones (a benchmark builds a real checkpoint's shape)."""
    from transformers import Idefics3Config, Idefics3Processor, SmolVLMConfig, SmolVLMProcessor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    classes = {"idefics3": (Idefics3ImageProcessorPil, Idefics3Processor, Idefics3Config),
               "smolvlm": (SmolVLMImageProcessorPil, SmolVLMProcessor, SmolVLMConfig)}
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    image_cls, processor_cls, config_cls = classes[kind]
    tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"] + tags
    tok = build_tokenizer(specials, eos="<end_of_utterance>", pad="<|endoftext|>",
                          extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                 "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    images = image_cls(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, image_mean=[0.5] * 3,
                       image_std=[0.5] * 3, do_image_splitting=True)
    per_tile = ((tile // patch) // scale) ** 2
    template = chat_template("<|im_start|>User:", "<image>", "<end_of_utterance>\n", "Assistant:")
    processor = image_only(processor_cls)(image_processor=images, tokenizer=tok, image_seq_len=per_tile, chat_template=template)
    vision = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=tile, patch_size=patch),
              **(vision or {})}
    text = {**_text(tok, "llama", num_key_value_heads=4), **(text or {})}
    config = config_cls(text_config=text, vision_config=vision, scale_factor=scale,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return _model(config, seed), processor


def build_smolvlm(**kwargs):
    """Tiny SmolVLM (see build_idefics3)."""
    return build_idefics3("smolvlm", **kwargs)


# --- InternVL -------------------------------------------------------------------------------------
def build_internvl(*, tile: int = 32, patch: int = 4, max_patches: int = 6, seed: int = 0, text: dict | None = None,
                   vision: dict | None = None):
    """Tiny InternVL (the HF format of InternVL3): images cut into up to `max_patches` tiles of 32 px (8x8 patches,
    pixel-shuffled by 0.5 to 4x4 = 16 tokens each) plus a thumbnail, between <img> and </img>; a Qwen2 LM.

    text / vision: config entries that replace the tiny ones (a benchmark builds a real checkpoint's shape)."""
    from transformers import InternVLConfig, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = build_tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>",
                          extra={"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>", "end_image_token": "</img>",
                                 "video_token": "<video>"})
    # as the published checkpoints: the image processor does not tile by itself, InternVLProcessor asks it to (crop_to_patches)
    images = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=False, min_patches=1, max_patches=max_patches,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    per_tile = (tile // patch // 2) ** 2
    template = chat_template("<|im_start|>user\n", "<IMG_CONTEXT>\n", "<|im_end|>\n", "<|im_start|>assistant\n")
    processor = image_only(InternVLProcessor)(image_processor=images, tokenizer=tok, image_seq_length=per_tile, chat_template=template)
    vision = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=tile, patch_size=patch),
              **(vision or {})}
    text = {**_text(tok, "qwen2"), **(text or {})}
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id, image_seq_length=per_tile,
                            downsample_ratio=0.5)
    return _model(config, seed), processor


#: name -> builder of (model, processor), every family neuronwidgets supports.
FAMILIES: dict[str, Callable] = {
    "qwen2-vl": lambda **kw: build_qwen2_vl("2", **kw),
    "qwen2.5-vl": lambda **kw: build_qwen2_vl("2.5", **kw),
    "llava-next": build_llava_next,
    "llava-onevision": build_llava_onevision,
    "gemma3": build_gemma3,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "internvl": build_internvl,
}
