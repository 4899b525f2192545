"""numpy ⇄ sensor_msgs/PointCloud2, without sensor_msgs_py.

Colour follows the RViz/PCL convention: a FLOAT32 field named ``rgb`` whose 4 bytes are the uint32
0x00RRGGBB (``rgba``: 0xAARRGGBB). Alpha stays 0 when building, so the float bit pattern is never a NaN that
float handling could rewrite.
"""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from perception_fm.errors import BadInputError
from perception_fm.ros.image_codec import message_bytes, new_message, to_uint8_array

# PointField.datatype → numpy type of one value
POINT_FIELD_DTYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8), PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16), PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32), PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32), PointField.FLOAT64: np.dtype(np.float64),
}

_XYZ_FIELDS = [("x", 0), ("y", 4), ("z", 8)]
# The packed colour as a uint32 at byte 12 of a 16-byte point (the whole point as four little-endian words).
_RGB_WORD = np.dtype({"names": ["rgb"], "formats": ["<u4"], "offsets": [12], "itemsize": 16})


def _fields(with_rgb: bool) -> list[PointField]:
    names = _XYZ_FIELDS + ([("rgb", 12)] if with_rgb else [])
    return [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1) for name, offset in names]


def xyzrgb_to_pointcloud2(points: np.ndarray, colors: np.ndarray | None = None, header=None) -> PointCloud2:
    """An unorganised cloud (height 1, width N): x, y, z FLOAT32 at 0, 4, 8 and, with `colors` ((N, 3) uint8
    RGB), ``rgb`` FLOAT32 at 12 holding 0x00RRGGBB; point_step 16 (12 without colour), little-endian,
    is_dense when every coordinate is finite."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise BadInputError("size", f"points must be (N, 3), got shape {points.shape}")
    if points.dtype.kind not in "fiu":
        raise BadInputError("encoding", f"points must be numbers, got {points.dtype}")
    count = points.shape[0]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8 or colors.ndim != 2 or colors.shape[1] != 3:
            raise BadInputError("encoding", f"colors must be (N, 3) uint8 RGB, got {colors.dtype} {colors.shape}")
        if colors.shape[0] != count:
            raise BadInputError("size_mismatch", f"{count} points but {colors.shape[0]} colors")
    point_step = 16 if colors is not None else 12
    words = np.empty((count, point_step // 4), dtype="<f4")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf (and is_dense False)
        for axis in range(3):  # one long strided copy per axis: much faster than words[:, :3] = points
            words[:, axis] = points[:, axis]
    if colors is not None and count:
        # RGB → BGRA bytes (alpha 255) → as little-endian uint32 that is 0xFFRRGGBB; clear the alpha byte.
        bgra = cv2.cvtColor(np.ascontiguousarray(colors).reshape(1, count, 3), cv2.COLOR_RGB2BGRA)
        packed = bgra.reshape(count, 4).view("<u4").reshape(count)
        packed &= np.uint32(0x00FFFFFF)
        words.view(_RGB_WORD).reshape(count)["rgb"] = packed

    msg = new_message(PointCloud2)
    if header is not None:
        msg.header = header
    msg.height, msg.width = 1, count
    msg.fields = _fields(colors is not None)
    msg.is_bigendian = False
    msg.point_step, msg.row_step = point_step, point_step * count
    # The colour word is never NaN/inf (alpha 0 keeps the exponent bits zero), so the whole contiguous buffer
    # can be checked: far faster than the strided x, y, z columns.
    msg.is_dense = bool(np.isfinite(words).all())
    msg.data = to_uint8_array(words)
    return msg


def _cloud_dtype(msg: PointCloud2) -> np.dtype:
    point_step = int(msg.point_step)
    names, formats, offsets = [], [], []
    order = ">" if msg.is_bigendian else "<"
    for field in msg.fields:
        if field.datatype not in POINT_FIELD_DTYPES:
            raise BadInputError("encoding", f"point field {field.name!r} has unknown datatype {field.datatype}")
        if not field.name:
            raise BadInputError("encoding", "a point field has an empty name")
        if field.name in names:
            raise BadInputError("encoding", f"point field {field.name!r} appears twice")
        if field.count == 0:
            continue  # declares nothing
        value = POINT_FIELD_DTYPES[field.datatype].newbyteorder(order)
        end = int(field.offset) + value.itemsize * int(field.count)
        if end > point_step:
            raise BadInputError(
                "step", f"point field {field.name!r} ({field.count} x {value} at offset {field.offset}) ends at "
                        f"byte {end}, past point_step {point_step}")
        names.append(field.name)
        formats.append(value if field.count == 1 else (value, (int(field.count),)))
        offsets.append(int(field.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def pointcloud2_to_numpy(msg: PointCloud2, *, keep_organized: bool = False) -> dict[str, np.ndarray]:
    """Every field of the cloud as a named array: (N,) or (N, count) with N = height x width, or (height, width
    [, count]) with `keep_organized`. Values are views over ``msg.data`` (no copy) unless the cloud's byte order
    differs from this machine's. Handles any field layout, point_step and row_step padding."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = _cloud_dtype(msg)
    shape = (height, width) if keep_organized else (height * width,)
    if height * width == 0:
        return {name: np.empty(shape + dtype[name].shape, dtype[name].base.newbyteorder("="))
                for name in dtype.names}
    if point_step == 0:
        raise BadInputError("step", f"cloud of {width}x{height} points has point_step 0")
    if row_step < width * point_step:
        raise BadInputError("step", f"cloud row_step {row_step} is smaller than width {width} x point_step "
                                    f"{point_step} = {width * point_step}")
    data = message_bytes(msg.data)
    if data.size < row_step * height:
        raise BadInputError("size", f"cloud of {width}x{height} points with row_step {row_step} needs "
                                    f"{row_step * height} bytes, data has {data.size}")
    if row_step == width * point_step:
        cloud = np.ndarray((height * width,), dtype=dtype, buffer=data)
        cloud = cloud.reshape(height, width) if keep_organized else cloud
    else:
        cloud = np.ndarray((height, width), dtype=dtype, buffer=data, strides=(row_step, point_step))
        cloud = cloud if keep_organized else cloud.reshape(-1)  # a copy only when rows are padded
    swap = bool(msg.is_bigendian) == np.little_endian
    out = {}
    for name in dtype.names:
        values = cloud[name]
        if swap and values.dtype.itemsize > 1:
            values = values.astype(values.dtype.newbyteorder("="))
        out[name] = values
    return out


def _unpack_colors(packed: np.ndarray, field: str) -> np.ndarray:
    """(N,) 4-byte values (any 4-byte dtype) holding 0x??RRGGBB → (N, 3) uint8 RGB."""
    words = packed.view(np.uint32) if packed.dtype.itemsize == 4 else None
    if words is None:
        raise BadInputError("encoding", f"colour field {field!r} must be 4 bytes wide, got {packed.dtype}")
    colors = np.empty((packed.shape[0], 3), dtype=np.uint8)
    colors[:, 0] = words >> 16
    colors[:, 1] = words >> 8
    colors[:, 2] = words
    return colors


def pointcloud2_to_xyzrgb(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) float32 points (all N = height x width, non-finite ones included) and (N, 3) uint8 RGB from a
    packed ``rgb`` or ``rgba`` field, or None when the cloud has neither."""
    fields = pointcloud2_to_numpy(msg)
    missing = [axis for axis in "xyz" if axis not in fields]
    if missing:
        raise BadInputError("encoding", f"cloud has no {', '.join(missing)} field; fields: {', '.join(fields)}")
    if any(fields[axis].ndim != 1 for axis in "xyz"):
        raise BadInputError("encoding", "cloud x, y, z fields must have count 1")
    count = fields["x"].shape[0]
    points = np.empty((count, 3), dtype=np.float32)
    for column, axis in enumerate("xyz"):
        points[:, column] = fields[axis]
    colors = None
    for name in ("rgb", "rgba"):
        if name in fields:
            packed = fields[name]
            if packed.ndim != 1:
                raise BadInputError("encoding", f"colour field {name!r} must have count 1")
            colors = _unpack_colors(packed, name)
            break
    return points, colors
