"""perception-fm bench sam3: SAM 3 session cost per frame through our plugin path, by number of concepts and of
tracked objects, split into the four operations of a frame (encode = add_frame, detect, propagate, commit),
and the state a session retains after N frames.

On a GPU: the full SAM 3 architecture (transformers' default Sam3VideoConfig = facebook/sam3's layout, ~860 M
parameters) with random weights; on CPU: the tiny test architecture (perception_fm.bench.sam3_tiny), written to a
temporary checkpoint (removed at exit) and loaded through the real loader. Its random weights are biased so that
objects stay tracked (labelled `random-init (tiny, biased)` in the table and the rows). Random weights give real
timings (the work does not depend on the values). Objects are started with add_objects from box masks, as the concept tracker does
from detections. Frames are 640x480 renders of the synthetic sample. Figures, not tests: nothing here asserts a
speed.

Each operation is timed between device synchronisations (so the split adds up); "frame" is a separate pass of
the same four calls with a single synchronisation at the end (the node's real cost, the host copy of the
final masks included).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np

from perception_fm.bench.common import sample_frames, synchronize

from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.plugin_manager import PluginManager

PHRASES = ("person", "red mug", "chair", "laptop", "potted plant", "door", "bottle", "keyboard", "book", "lamp",
           "backpack", "cardboard box", "monitor", "cable", "whiteboard", "trash can")




def _box_masks(count: int, size: tuple[int, int], seed: int = 0) -> list:
    import torch

    rng = np.random.default_rng(seed)
    h, w = size
    masks = []
    for _ in range(count):
        y0, x0 = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
        mask = torch.zeros(h, w)
        mask[y0:y0 + rng.integers(h // 16, h // 4), x0:x0 + rng.integers(w // 16, w // 4)] = 1.0
        masks.append(mask)
    return masks


def create_model(kind: str, device: str, image_size: int, precision: str):
    """(model, weights label). The tiny checkpoint is written to a temporary directory that is removed once
    the model is loaded (the loader keeps nothing open in it)."""
    manager = PluginManager(entry_points=False)
    extra = {"precision": precision}
    if image_size:
        extra["image_size"] = image_size
    if kind == "tiny":
        from perception_fm.bench.sam3_tiny import WEIGHTS_LABEL, save_tiny_checkpoint

        with tempfile.TemporaryDirectory(prefix="sam3-tiny-") as directory:
            save_tiny_checkpoint(directory)
            model = manager.create(Task.SEGMENTATION, "sam3", ModelOptions(weights=directory, device=device,
                                                                             extra=extra))
        return model, WEIGHTS_LABEL
    return (manager.create(Task.SEGMENTATION, "sam3", ModelOptions(random_weights=True, device=device, extra=extra)),
            "random-init")


def _step(session, images, index, concepts, timings: dict | None, device: str):
    """One frame as the concept tracker runs it; returns the propagation."""
    def timed(name, function, *args, **kwargs):
        if timings is None:
            return function(*args, **kwargs)
        synchronize(device)
        started = time.perf_counter()
        result = function(*args, **kwargs)
        synchronize(device)
        timings.setdefault(name, []).append((time.perf_counter() - started) * 1e3)
        return result

    frame = timed("encode", session.add_frame, images[index % len(images)])
    propagation = timed("propagate", session.propagate, frame)
    if concepts:
        timed("detect", session.detect, frame, concepts)
    final = dict(zip(propagation.obj_ids, propagation.masks))
    timed("commit", session.commit, frame, final, conditioning=list(final)[:1] if index % 16 == 0 else ())
    return propagation


def bench(model, images, n_concepts: int, n_objects: int, iterations: int, memory_frames: int) -> dict:
    import torch

    device = model.device
    concepts = {i + 1: model.encode_concept(PHRASES[i % len(PHRASES)] + ("" if i < len(PHRASES) else f" {i}"))
                for i in range(n_concepts)}
    session = model.new_session()
    first = session.add_frame(images[0])
    if n_objects:
        session.add_objects(first, dict(enumerate(_box_masks(n_objects, model.capabilities.mask_size), start=1)))
    for i in range(1, 4):  # warm-up: allocator, kernels, text embeddings
        _step(session, images, i, concepts, None, device)
    timings: dict[str, list[float]] = {}
    for i in range(4, 4 + iterations):
        _step(session, images, i, concepts, timings, device)
    frame_ms = []
    for i in range(4 + iterations, 4 + 2 * iterations):
        synchronize(device)
        started = time.perf_counter()
        propagation = _step(session, images, i, concepts, None, device)
        propagation.masks.cpu()  # the tracker's single host copy of the final masks
        frame_ms.append((time.perf_counter() - started) * 1e3)
    row = {"concepts": n_concepts, "objects": n_objects,
           **{f"{name}_ms": float(np.median(values)) for name, values in timings.items()},
           "frame_ms": float(np.median(frame_ms))}
    if memory_frames:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for i in range(memory_frames):
            _step(session, images, 4 + 2 * iterations + i, concepts, None, device)
        stats = session.memory_stats()
        row["after_frames"] = 4 + 2 * iterations + memory_frames
        row["retained_mb"] = (stats["memory_bytes"] + stats["frame_bytes"]) / 2**20
        row["memory_stats"] = stats
        if device.startswith("cuda"):
            row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            row["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _format(row: dict) -> str:
    text = (f"{row['concepts']:>8} {row['objects']:>7}  {row.get('encode_ms', 0):8.1f} {row.get('detect_ms', 0):8.1f} "
            f"{row.get('propagate_ms', 0):9.1f} {row.get('commit_ms', 0):8.1f} {row['frame_ms']:8.1f}")
    if "retained_mb" in row:
        stats = row["memory_stats"]
        text += (f"  {row['retained_mb']:8.2f} MB after {row['after_frames']} frames "
                 f"({stats['spatial_memories']} spatial memories, {stats['conditioning_entries']} conditioning)")
        if "peak_mb" in row:
            text += f", peak {row['peak_mb']:.0f} MB"
    return text


def main(argv=None) -> int:
    import torch

    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="perception-fm bench sam3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("full", "tiny"), default="full" if gpu else "tiny",
                        help="full: default SAM 3 architecture, random weights; tiny: the test architecture")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=0, help="0 = the architecture's (1008 full, 112 tiny)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--concepts", default="1,4,16", help="concept counts")
    parser.add_argument("--objects", default="1,10,50", help="tracked object counts")
    parser.add_argument("--grid", action="store_true", help="every (concepts, objects) pair instead of two sweeps")
    parser.add_argument("--iterations", type=int, default=20 if gpu else 10, help="timed frames per row")
    parser.add_argument("--memory-frames", type=int, default=100, help="frames run before reading retained state")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--save", action="store_true", help="put the rows into bench/results/<device>.json")
    args = parser.parse_args(argv)
    concepts = [int(v) for v in args.concepts.split(",") if v]
    objects = [int(v) for v in args.objects.split(",") if v]
    if args.grid:
        pairs = [(c, o) for c in concepts for o in objects]
    else:  # concepts with one object, then objects with one concept
        pairs = [(c, min(objects)) for c in concepts] + [(min(concepts), o) for o in objects if o != min(objects)]
    started = time.perf_counter()
    model, weights = create_model(args.model, args.device, args.image_size, args.precision)
    name = torch.cuda.get_device_name() if model.device.startswith("cuda") else "cpu"
    print(f"sam3 {args.model} on {model.device} ({name}), image {model.image_size} px, masks "
          f"{model.capabilities.mask_size[0]} px, precision {model.amp_dtype or 'fp32'}, weights: {weights}, "
          f"loaded in {time.perf_counter() - started:.1f} s")
    images = sample_frames(8)
    print(f"{'concepts':>8} {'objects':>7}  {'encode':>8} {'detect':>8} {'propagate':>9} {'commit':>8} {'frame':>8}"
          f"  retained (ms, medians)")
    rows = []
    for n_concepts, n_objects in pairs:
        row = bench(model, images, n_concepts, n_objects, args.iterations, args.memory_frames)
        row.update(model=args.model, weights=weights, device=model.device, image_size=model.image_size)
        rows.append(row)
        print(_format(row), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    if args.save:
        from perception_fm.bench.common import save_section

        print(f"wrote {save_section('sam3', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
