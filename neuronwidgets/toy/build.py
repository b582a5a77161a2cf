"""Build tiny LLaVA models and their processors in code: the toy's skeleton and test models.

Nothing here downloads anything: the tokenizer, the image processor and the model come
from configs, so tests and the toy take the same `LlavaForConditionalGeneration` code path
as a real llava-hf checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from neuronwidgets.toy.tokenizer import build_tokenizer

try:  # transformers >= 5 without torchvision: the PIL backend, named explicitly to stay quiet
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import CLIPImageProcessor

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_processor(words: Iterable[str], image_size: int = 64, patch_size: int = 8) -> LlavaProcessor:
    """A LlavaProcessor with the byte-fallback word tokenizer and a CLIP image processor."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_convert_rgb=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_model(
    processor: LlavaProcessor,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 4,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    intermediate: int = 96,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA (CLIP tower + projector + Llama) that fits `processor`."""
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 4,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=text_hidden,
        intermediate_size=intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    return model
