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


def device_name() -> tuple[str, bool]:
    """(name used for bench/results/<name>.json, whether a CUDA GPU is present)."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), True
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores", False


def results_path(device: str):
    from pathlib import Path

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    return Path("bench") / "results" / f"{name}.json"


def save_section(section: str, data) -> str:
    """Put one benchmark's result into this device's bench/results file as `section` (a suite run's other
    sections are kept), with the date it was measured under section_dates and the 1-minute load average then
    under section_load_average; returns the path."""
    import json
    import os
    from datetime import datetime, timezone

    device, gpu = device_name()
    path = results_path(device)
    results = json.loads(path.read_text()) if path.exists() else {
        "device": device, "gpu": gpu, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scaled_down_for_cpu": not gpu}
    results[section] = data
    results.setdefault("section_dates", {})[section] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # timings on a shared machine mean little without how busy it was
    results.setdefault("section_load_average", {})[section] = round(os.getloadavg()[0], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return str(path)
