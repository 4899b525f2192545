"""A tiny SAM 3 checkpoint for tests: the real Sam3VideoModel architecture at toy sizes (112 px images, 32 x 32
masks) with seeded random weights, written as save_pretrained does (config.json + model.safetensors) with an
offline CLIP tokenizer (built from open-clip-torch's BPE vocabulary file, the ids of facebook/sam3), so that
tests load it through the plugin's real loader:

    from sam3_tiny import save_tiny_sam3
    directory = save_tiny_sam3(tmp_path / "sam3")
    model = PluginManager(entry_points=False).create(Task.SEGMENTATION, "sam3",
                                                     ModelOptions(weights=str(directory), device="cpu"))

Random weights segment nothing meaningful: use it for plumbing, shapes, memory and timing, not accuracy.
"""
from __future__ import annotations

import os
from pathlib import Path

from perception_fm.bench.sam3_tiny import save_tiny_checkpoint

TINY_MASK_SIZE = (32, 32)


def save_tiny_sam3(directory: str | os.PathLike, **kwargs) -> Path:
    """Write the tiny checkpoint into `directory` (created if needed) and return it. kwargs: image_size,
    seed, num_queries, object_score_bias, detector_mask_gain, tracker_mask_gain
    (perception_fm.bench.sam3_tiny.save_tiny_checkpoint)."""
    return save_tiny_checkpoint(directory, **kwargs)
