"""What the benchmarks share: input frames and timing on asynchronous devices."""
from __future__ import annotations

import numpy as np


def sample_frames(count: int, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """RGB frames of the synthetic sample (a textured room), the benchmarks' input."""
    from perception_fm.replay.synthetic import SampleConfig, render_frame

    config = SampleConfig(width=width, height=height, frames=max(count, 2))
    return [render_frame(config, i).rgb for i in range(count)]


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
