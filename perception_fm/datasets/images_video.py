"""Anything a user has: a folder of images or a video file, without ground truth, so the stack can run on it.

Images are taken in natural name order (img2 before img10) and stamped at `rate_hz` from DEFAULT_START_NS; a
video's frames at its own frame rate (or `rate_hz`), frame index / rate, never from the decoder's clock, so the
same file gives the same bag. camera_info is written when the intrinsics are known (fx,fy,cx,cy, or a horizontal
field of view); without it depth_node uses the model's own intrinsics where it has them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from perception_fm.datasets.bag import (DEFAULT_START_NS, DatasetError, FrameWriter, ImportSummary, Intrinsics,
                                        Unreadable, check_rate, check_sizes, read_rgb, write_bag)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_RATE_HZ = 10.0


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _camera(intrinsics: str | None, fov_deg: float | None, shape) -> Intrinsics | None:
    if intrinsics:
        return Intrinsics.parse(intrinsics)
    if fov_deg is not None:
        return Intrinsics.from_fov(fov_deg, shape[1], shape[0])
    return None


def _notes(rate_hz: float, intrinsics: str | None, fov_deg: float | None) -> list[str]:
    camera = (f"intrinsics given: {intrinsics}" if intrinsics else f"intrinsics from a {fov_deg:g}° horizontal "
              "field of view" if fov_deg is not None else "no intrinsics: no camera_info written")
    return [f"stamped at {rate_hz:g} Hz", camera, "no ground truth"]


def import_images(source: str | Path, output: str | Path, *, rate_hz: float = DEFAULT_RATE_HZ,
                  intrinsics: str | None = None, fov_deg: float | None = None,
                  overwrite: bool = False) -> ImportSummary:
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"{str(folder)!r} is not a folder of images")
    check_rate(rate_hz)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=_natural_key)
    if not files:
        raise DatasetError(f"{str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    summary = ImportSummary(str(folder), str(output), "images", notes=_notes(rate_hz, intrinsics, fov_deg))

    def frames(writer: FrameWriter) -> None:
        camera = None
        for index, path in enumerate(files):
            try:
                rgb = read_rgb(path)
                check_sizes(writer, rgb, None, path.name)
            except Unreadable as error:
                writer.skip(error.reason, str(error))
                continue
            camera = camera or _camera(intrinsics, fov_deg, rgb.shape)
            writer.write(DEFAULT_START_NS + round(index * 1e9 / rate_hz), rgb, camera)

    return write_bag(output, summary, frames, overwrite=overwrite)


def import_video(source: str | Path, output: str | Path, *, rate_hz: float | None = None,
                 intrinsics: str | None = None, fov_deg: float | None = None,
                 overwrite: bool = False) -> ImportSummary:
    import cv2

    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"video {str(path)!r} does not exist")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"video {str(path)!r} cannot be opened by OpenCV (not a video, or a codec it lacks)")
        if rate_hz is not None:
            rate = check_rate(rate_hz)
        else:
            rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            if not (rate > 0 and math.isfinite(rate)):
                raise DatasetError(f"video {str(path)!r} states no frame rate; give --rate")
            check_rate(rate)
        summary = ImportSummary(str(path), str(output), "video", notes=_notes(rate, intrinsics, fov_deg))

        def frames(writer: FrameWriter) -> None:
            camera, index = None, 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = bgr[:, :, ::-1].copy()
                stamp = DEFAULT_START_NS + round(index * 1e9 / rate)
                index += 1
                try:
                    check_sizes(writer, rgb, None, f"frame {index - 1}")
                except Unreadable as error:
                    writer.skip(error.reason, str(error))
                    continue
                camera = camera or _camera(intrinsics, fov_deg, rgb.shape)
                writer.write(stamp, rgb, camera)

        return write_bag(output, summary, frames, overwrite=overwrite)
    finally:
        capture.release()
