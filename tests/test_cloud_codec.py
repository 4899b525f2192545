"""numpy ⇄ sensor_msgs/PointCloud2, and a smoke run of the codec benchmark."""
import array
import struct

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from perception_fm.errors import BadInputError
from perception_fm.ros.cloud_codec import pointcloud2_to_numpy, pointcloud2_to_xyzrgb, xyzrgb_to_pointcloud2

RNG = np.random.default_rng(3)


def random_cloud(count: int):
    points = RNG.standard_normal((count, 3)).astype(np.float32)
    colors = RNG.integers(0, 256, (count, 3), dtype=np.uint8)
    return points, colors


def field(name, offset, datatype, count=1):
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def make_cloud(fields, point_step, rows, height=1, row_step=None, bigendian=False) -> PointCloud2:
    """`rows`: height lists of per-point bytes (each point_step long)."""
    width = len(rows[0])
    row_step = row_step if row_step is not None else width * point_step
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=bigendian, point_step=point_step,
                      row_step=row_step)
    data = b"".join(b"".join(points).ljust(row_step, b"\xab") for points in rows)
    msg.data = array.array("B", data)
    return msg


# -- building -------------------------------------------------------------------------------------------------

def test_xyzrgb_layout():
    points = np.array([[1.0, 2.0, 3.0], [-0.5, 0.25, 8.0]], np.float32)
    colors = np.array([[0x12, 0x34, 0x56], [255, 0, 1]], np.uint8)
    header = Header(frame_id="camera_optical")
    msg = xyzrgb_to_pointcloud2(points, colors, header)
    assert msg.header.frame_id == "camera_optical"
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert msg.is_bigendian is False and msg.is_dense is True
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    data = bytes(msg.data)
    assert len(data) == 32
    # the bytes a PCL/RViz reader expects: little-endian floats, then uint32 0x00RRGGBB
    assert data[:16] == struct.pack("<fffI", 1.0, 2.0, 3.0, 0x00123456)
    assert data[16:] == struct.pack("<fffI", -0.5, 0.25, 8.0, 0x00FF0001)


def test_xyz_only_layout():
    points, _ = random_cloud(5)
    msg = xyzrgb_to_pointcloud2(points)
    assert [f.name for f in msg.fields] == ["x", "y", "z"]
    assert (msg.point_step, msg.row_step, msg.width) == (12, 60, 5)
    assert bytes(msg.data) == points.astype("<f4").tobytes()
    decoded, colors = pointcloud2_to_xyzrgb(msg)
    assert colors is None
    np.testing.assert_array_equal(decoded, points)


def test_round_trip_exact():
    points, colors = random_cloud(1000)
    decoded_points, decoded_colors = pointcloud2_to_xyzrgb(xyzrgb_to_pointcloud2(points, colors))
    assert decoded_points.dtype == np.float32 and decoded_colors.dtype == np.uint8
    np.testing.assert_array_equal(decoded_points, points)
    np.testing.assert_array_equal(decoded_colors, colors)


def test_float64_points_and_is_dense():
    points = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 1.0]])
    msg = xyzrgb_to_pointcloud2(points, np.zeros((2, 3), np.uint8))
    assert msg.is_dense is False
    decoded, _ = pointcloud2_to_xyzrgb(msg)
    np.testing.assert_array_equal(decoded, points.astype(np.float32))
    assert xyzrgb_to_pointcloud2(np.array([[1e39, 0.0, 0.0]])).is_dense is False  # overflows float32
    assert xyzrgb_to_pointcloud2(np.array([[np.inf, 0.0, 0.0]], np.float32)).is_dense is False


def test_empty_cloud():
    msg = xyzrgb_to_pointcloud2(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    assert (msg.width, msg.height, len(msg.data), msg.is_dense) == (0, 1, 0, True)
    points, colors = pointcloud2_to_xyzrgb(msg)
    assert points.shape == (0, 3) and colors.shape == (0, 3)


def test_serialized_round_trip():
    points, colors = random_cloud(50)
    received = deserialize_message(serialize_message(xyzrgb_to_pointcloud2(points, colors)), PointCloud2)
    decoded_points, decoded_colors = pointcloud2_to_xyzrgb(received)
    np.testing.assert_array_equal(decoded_points, points)
    np.testing.assert_array_equal(decoded_colors, colors)


def test_vga_cloud_round_trip_over_the_wire_is_exact_and_never_a_list():
    """A cloud as big as a 640x480 frame gives (307,200 points, 4.9 MB): data is array.array both ways (never a
    Python list of bytes) and points and colours come back bit for bit."""
    points, colors = random_cloud(640 * 480)
    built = xyzrgb_to_pointcloud2(points, colors)
    assert isinstance(built.data, array.array) and built.data.typecode == "B"
    received = deserialize_message(serialize_message(built), PointCloud2)
    assert isinstance(received.data, array.array) and received.data.typecode == "B"
    decoded_points, decoded_colors = pointcloud2_to_xyzrgb(received)
    assert decoded_points.tobytes() == points.astype(np.float32).tobytes()
    np.testing.assert_array_equal(decoded_colors, colors)


def test_build_errors():
    points, colors = random_cloud(4)
    with pytest.raises(BadInputError) as excinfo:
        xyzrgb_to_pointcloud2(points[:, :2])
    assert excinfo.value.reason == "size" and "(4, 2)" in str(excinfo.value)
    with pytest.raises(BadInputError) as excinfo:
        xyzrgb_to_pointcloud2(points, colors[:3])
    assert excinfo.value.reason == "size_mismatch" and "4 points but 3 colors" in str(excinfo.value)
    with pytest.raises(BadInputError) as excinfo:
        xyzrgb_to_pointcloud2(points, colors.astype(np.float32))
    assert excinfo.value.reason == "encoding"


# -- decoding any layout --------------------------------------------------------------------------------------

ALL_TYPES = [
    ("i8", PointField.INT8, "b", -5), ("u8", PointField.UINT8, "B", 250), ("i16", PointField.INT16, "h", -30000),
    ("u16", PointField.UINT16, "H", 65000), ("i32", PointField.INT32, "i", -2_000_000_000),
    ("u32", PointField.UINT32, "I", 4_000_000_000), ("f32", PointField.FLOAT32, "f", 1.5),
    ("f64", PointField.FLOAT64, "d", -2.25),
]


@pytest.mark.parametrize("bigendian", [False, True])
def test_every_datatype_with_odd_offsets(bigendian):
    order = ">" if bigendian else "<"
    fields, offset, fmt = [], 1, order + "x"  # one pad byte first: every field is unaligned
    for name, datatype, code, _ in ALL_TYPES:
        fields.append(field(name, offset, datatype))
        offset += struct.calcsize(code)
        fmt += code
    point_step = offset + 3
    points = []
    for i in range(4):
        values = [value * (i + 1) if isinstance(value, float) else value - (i if value > 0 else -i)
                  for *_, value in ALL_TYPES]
        points.append(struct.pack(fmt, *values).ljust(point_step, b"\x00"))
    decoded = pointcloud2_to_numpy(make_cloud(fields, point_step, [points], bigendian=bigendian))
    assert list(decoded) == [name for name, *_ in ALL_TYPES]
    for name, datatype, code, value in ALL_TYPES:
        assert decoded[name].dtype == np.dtype(code).newbyteorder("=")
        expected = [value * (i + 1) if isinstance(value, float) else value - (i if value > 0 else -i)
                    for i in range(4)]
        assert decoded[name].tolist() == expected, name


def test_count_padding_and_organised_cloud():
    # point: normal[3] float32 at 0, intensity uint16 at 14, 2 pad bytes; rows padded to 60 bytes
    fields = [field("normal", 0, PointField.FLOAT32, 3), field("intensity", 14, PointField.UINT16)]
    rows = [[struct.pack("<fffxxH2x", r, c, r + c, 100 * r + c) for c in range(3)] for r in range(2)]
    msg = make_cloud(fields, 18, rows, height=2, row_step=60)
    flat = pointcloud2_to_numpy(msg)
    assert flat["normal"].shape == (6, 3) and flat["intensity"].shape == (6,)
    assert flat["intensity"].tolist() == [0, 1, 2, 100, 101, 102]
    assert flat["normal"][4].tolist() == [1.0, 1.0, 2.0]
    organised = pointcloud2_to_numpy(msg, keep_organized=True)
    assert organised["normal"].shape == (2, 3, 3) and organised["intensity"].shape == (2, 3)
    assert organised["intensity"][1].tolist() == [100, 101, 102]


def test_decoding_is_a_view():
    points, colors = random_cloud(10)
    msg = xyzrgb_to_pointcloud2(points, colors)
    x = pointcloud2_to_numpy(msg)["x"]
    assert np.shares_memory(x, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(x, points[:, 0])


def test_organised_xyzrgb_with_uint32_rgba_and_nans():
    fields = [field("x", 0, PointField.FLOAT32), field("y", 4, PointField.FLOAT32),
              field("z", 8, PointField.FLOAT32), field("rgba", 16, PointField.UINT32)]
    nan = float("nan")
    rows = [[struct.pack("<fff4xI", 1, 2, 3, 0x80FF1020), struct.pack("<fff4xI", nan, nan, nan, 0)],
            [struct.pack("<fff4xI", 4, 5, 6, 0xFF000102), struct.pack("<fff4xI", 7, 8, 9, 0x00ABCDEF)]]
    points, colors = pointcloud2_to_xyzrgb(make_cloud(fields, 20, rows, height=2))
    assert points.shape == (4, 3) and np.isnan(points[1]).all()
    np.testing.assert_array_equal(points[[0, 2, 3]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(colors, [[0xFF, 0x10, 0x20], [0, 0, 0], [0, 1, 2], [0xAB, 0xCD, 0xEF]])


def test_float64_xyz_and_big_endian_rgb():
    fields = [field("x", 0, PointField.FLOAT64), field("y", 8, PointField.FLOAT64),
              field("z", 16, PointField.FLOAT64), field("rgb", 24, PointField.FLOAT32)]
    rgb_float = struct.unpack(">f", struct.pack(">I", 0x00C08040))[0]
    rows = [[struct.pack(">dddf", 1.5, -2.0, 3.25, rgb_float)]]
    points, colors = pointcloud2_to_xyzrgb(make_cloud(fields, 28, rows, bigendian=True))
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points, [[1.5, -2.0, 3.25]])
    np.testing.assert_array_equal(colors, [[0xC0, 0x80, 0x40]])


def malformed(**changes) -> PointCloud2:
    msg = xyzrgb_to_pointcloud2(*random_cloud(4))
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize("changes, expected", [
    ({"row_step": 63}, "step"),
    ({"point_step": 15}, "step"),  # rgb (offset 12, 4 bytes) ends past the point
    ({"point_step": 0, "fields": []}, "step"),
    ({"fields": [field("x", 0, 9)]}, "encoding"),  # unknown datatype
    ({"fields": [field("x", 0, 7), field("x", 4, 7)]}, "encoding"),  # duplicate name
    ({"fields": [field("x", 0, 7, count=5)]}, "step"),  # 20 bytes in a 16-byte point
    ({"data": array.array("B", bytes(63))}, "size"),
    ({"width": 5}, "step"),  # row_step 64 < 5 points
    ({"width": 5, "row_step": 80}, "size"),  # more points than data
    ({"height": 2}, "size"),
])
def test_malformed(changes, expected):
    with pytest.raises(BadInputError) as excinfo:
        pointcloud2_to_numpy(malformed(**changes))
    assert excinfo.value.reason == expected


def test_malformed_messages_name_the_values():
    with pytest.raises(BadInputError, match=r"needs 128 bytes, data has 64"):
        pointcloud2_to_numpy(malformed(height=2))
    with pytest.raises(BadInputError, match=r"row_step 63 .* width 4 x point_step 16 = 64"):
        pointcloud2_to_numpy(malformed(row_step=63))


def test_xyzrgb_needs_xyz():
    msg = make_cloud([field("x", 0, PointField.FLOAT32), field("y", 4, PointField.FLOAT32)], 8,
                     [[struct.pack("<ff", 1, 2)]])
    with pytest.raises(BadInputError) as excinfo:
        pointcloud2_to_xyzrgb(msg)
    assert excinfo.value.reason == "encoding" and "z" in str(excinfo.value)
    with pytest.raises(BadInputError) as excinfo:
        pointcloud2_to_xyzrgb(malformed(fields=[field("x", 0, 7), field("y", 4, 7), field("z", 8, 7),
                                                field("rgb", 12, PointField.UINT16)]))
    assert excinfo.value.reason == "encoding"


# -- benchmark smoke run --------------------------------------------------------------------------------------

@pytest.mark.ros
def test_codec_bench_smoke():
    from perception_fm.bench import codec_bench

    result = codec_bench.run(frames=2, width=64, height=48, naive_frames=1)
    for key in ("ours_ms_mean", "ours_ms_p95", "naive_ms_mean", "naive_ms_p95", "speedup"):
        assert result[key] > 0, key
    assert result["points"] > 0 and result["frames"] == 2
    assert set(result["stages_ms"]) == set(codec_bench.STAGES)
    assert result["outputs_match"] is True
