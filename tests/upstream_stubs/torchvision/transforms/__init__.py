"""ToTensor, Normalize and CenterCrop as torchvision documents them, for upstream DA3's InputProcessor in tests.

ToTensor: an (H, W, C) uint8 image (PIL or numpy) -> (C, H, W) float32 in [0, 1] (value / 255).
Normalize: (tensor - mean) / std per channel, in the tensor's dtype.
CenterCrop: the central (h, w) window; torchvision rounds the offsets as int(round((H - h) / 2.0)).
"""
from __future__ import annotations

import numpy as np
import torch


class ToTensor:
    def __call__(self, picture) -> torch.Tensor:
        array = np.array(picture, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.to(torch.float32).div(255)
        return tensor


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub(mean).div(std)


class CenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        crop_h, crop_w = self.size
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return tensor[..., top:top + crop_h, left:left + crop_w]
