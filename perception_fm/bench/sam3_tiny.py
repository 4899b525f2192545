"""A tiny SAM 3 of the real architecture (every module of Sam3VideoModel, small widths and depths), for tests
and CPU benchmarks only: random weights, saved like a hub checkpoint (config.json + model.safetensors +
tokenizer files) so it loads through the plugin's real loader.

Its weights are random AND biased (see save_tiny_checkpoint) so that masks look like a trained model's and
objects stay "present": it tracks nothing real. It lives with the benchmarks, not under perception_fm.plugins,
and registers no model, so that no node or plugin listing can offer it; whatever reports a figure measured with
it says WEIGHTS_LABEL.
"""
from __future__ import annotations

import os
from pathlib import Path

TINY_IMAGE_SIZE = 112  # 8 x 8 patches of 14 px; masks are 32 x 32
WEIGHTS_LABEL = "random-init (tiny, biased)"  # how benchmark tables and result files name these weights


def tiny_config(image_size: int = TINY_IMAGE_SIZE, num_queries: int = 16):
    """Sam3VideoConfig with the real module layout and tiny sizes. Constraints of the architecture kept:
    the FPN width is a multiple (> 1) of the memory width (64: the tracker's cross-attention takes 64-channel
    memories, and object pointers are split into memory-width tokens) and the CLIP vocabulary is the real one
    (the tokenizer's ids index it)."""
    from transformers import Sam3VideoConfig

    patch = 14
    if image_size % patch:
        raise ValueError(f"image_size must be a multiple of {patch}")
    grid = image_size // patch
    vit = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=image_size, patch_size=patch, window_size=4, global_attn_indexes=[1],
               pretrain_image_size=56)
    vision = dict(model_type="sam3_vision_model", backbone_config=vit, fpn_hidden_size=128,
                  backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2])
    detector = dict(
        model_type="sam3", vision_config=vision,
        text_config=dict(model_type="clip_text_model", vocab_size=49408, hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32),
        geometry_encoder_config=dict(hidden_size=128, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=128, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=128, num_layers=1, num_queries=num_queries, num_attention_heads=2,
                                 intermediate_size=64),
        mask_decoder_config=dict(hidden_size=128, num_upsampling_stages=3, num_attention_heads=2),
    )
    tracker = dict(
        model_type="sam3_tracker_video", vision_config=vision, image_size=image_size,
        prompt_encoder_config=dict(hidden_size=128, image_size=image_size, patch_size=patch),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_encoder_hidden_size=128, memory_encoder_output_channels=64, mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
    )
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * grid)
    config.image_size = image_size
    return config


def save_tiny_checkpoint(directory: str | os.PathLike, image_size: int = TINY_IMAGE_SIZE, seed: int = 0,
                         num_queries: int = 16, object_score_bias: float = 3.0, detector_mask_gain: float = 300.0,
                         tracker_mask_gain: float = 3000.0) -> Path:
    """Build the tiny model with seeded random weights and write it with an offline CLIP tokenizer in the
    layout `save_pretrained` gives (what a hub snapshot of facebook/sam3 holds, minus the original .pt).

    `object_score_bias` is added to the tracker's object-score head so that random weights judge objects
    present (otherwise every tracked mask is the "no object" constant and tracking tests compare nothing);
    the mask gains scale the last layers that make mask logits, whose random values are otherwise all within
    0.01 of 0 (masks all ~0.5); with them, logits spread over a few units, like a trained model's."""
    import torch
    from transformers import Sam3VideoModel

    from perception_fm.plugins.sam3.tokenizer import clip_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Sam3VideoModel(tiny_config(image_size, num_queries)).eval()
        with torch.no_grad():
            model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += object_score_bias
            for mlp in model.tracker_model.mask_decoder.output_hypernetworks_mlps:
                mlp.proj_out.weight *= tracker_mask_gain
            model.detector_model.mask_decoder.mask_embedder.layers[-1].weight *= detector_mask_gain
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    return directory
