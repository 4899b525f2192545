"""numpy ⇄ sensor_msgs/Image and CompressedImage."""
import array
import re

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from perception_fm.errors import BadInputError
from perception_fm.ros.image_codec import (
    ENCODINGS,
    compressed_to_rgb8,
    image_to_numpy,
    image_to_rgb8,
    numpy_to_image,
    rgb8_to_compressed,
)

RNG = np.random.default_rng(7)


def random_pixels(encoding: str, height: int = 5, width: int = 6) -> np.ndarray:
    channels, dtype = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def raw_message(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: int = 0) -> Image:
    msg = Image()
    msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian = height, width, step, encoding, bigendian
    msg.data = array.array("B", data)
    return msg


def reason(excinfo) -> str:
    return excinfo.value.reason


# -- layout ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    pixels = random_pixels(encoding)
    msg = numpy_to_image(pixels, encoding)
    channels, dtype = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 6, encoding, 0)
    assert msg.step == 6 * channels * dtype.itemsize
    assert len(msg.data) == msg.step * 5
    decoded = image_to_numpy(msg)
    assert decoded.dtype == dtype and decoded.shape == pixels.shape
    np.testing.assert_array_equal(decoded, pixels)


def test_decode_is_a_view_and_data_is_the_array_rclpy_keeps():
    pixels = random_pixels("32FC1", 4, 3)
    msg = numpy_to_image(pixels, "32FC1")
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    decoded = image_to_numpy(msg)
    assert np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))
    # known bytes: little-endian float32
    assert bytes(msg.data[:4]) == np.float32(pixels[0, 0]).astype("<f4").tobytes()


def test_header_and_float64_to_32fc1():
    header = Header(frame_id="cam")
    header.stamp.sec = 12
    msg = numpy_to_image(np.full((2, 3), 1.5, dtype=np.float64), "32FC1", header)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 12
    assert image_to_numpy(msg).dtype == np.float32
    np.testing.assert_array_equal(image_to_numpy(msg), np.full((2, 3), 1.5, np.float32))


def test_builder_accepts_single_channel_last_axis_and_non_contiguous():
    pixels = random_pixels("mono16", 4, 8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(pixels[:, :, None], "mono16")), pixels)
    strided = random_pixels("rgb8", 6, 8)[::2, ::2]
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(strided, "rgb8")), strided)


def test_builder_rejects_wrong_dtype_and_shape():
    with pytest.raises(BadInputError) as excinfo:
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    assert reason(excinfo) == "encoding" and "float32" in str(excinfo.value)
    with pytest.raises(BadInputError) as excinfo:
        numpy_to_image(np.zeros((2, 2, 4), np.uint8), "rgb8")
    assert reason(excinfo) == "encoding" and "(2, 2, 4)" in str(excinfo.value)
    with pytest.raises(BadInputError) as excinfo:
        numpy_to_image(np.zeros((0, 2), np.uint8), "mono8")
    assert reason(excinfo) == "empty"
    with pytest.raises(BadInputError) as excinfo:
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb9")
    assert reason(excinfo) == "encoding" and "rgb9" in str(excinfo.value)


def test_padded_rows():
    pixels = random_pixels("rgb8", 3, 4)
    step = 4 * 3 + 5
    data = b"".join(row.tobytes() + b"\xee" * 5 for row in pixels)
    decoded = image_to_numpy(raw_message("rgb8", 3, 4, step, data))
    np.testing.assert_array_equal(decoded, pixels)
    assert decoded.strides[0] == step  # a view, not a copy


def test_padded_rows_with_odd_step_for_16_bit():
    pixels = random_pixels("mono16", 3, 4)
    step = 4 * 2 + 3  # rows start at odd addresses
    data = b"".join(row.astype("<u2").tobytes() + b"\x01\x02\x03" for row in pixels)
    msg = raw_message("mono16", 3, 4, step, data)
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)
    np.testing.assert_array_equal(image_to_rgb8(msg)[..., 0], (pixels >> 8).astype(np.uint8))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "16SC1", "32SC1", "32FC1", "64FC1", "16UC3"])
def test_big_endian(encoding):
    pixels = random_pixels(encoding, 3, 5)
    big = pixels.astype(pixels.dtype.newbyteorder(">"))
    row = pixels[0].nbytes
    msg = raw_message(encoding, 3, 5, row, big.tobytes(), bigendian=1)
    decoded = image_to_numpy(msg)
    assert decoded.dtype == ENCODINGS[encoding].dtype  # native order out
    np.testing.assert_array_equal(decoded, pixels)


def test_big_endian_flag_ignored_for_bytes():
    pixels = random_pixels("rgb8", 2, 2)
    np.testing.assert_array_equal(image_to_numpy(raw_message("rgb8", 2, 2, 6, pixels.tobytes(), 1)), pixels)


def test_serialized_round_trip():
    pixels = random_pixels("32FC1", 6, 7)
    received = deserialize_message(serialize_message(numpy_to_image(pixels, "32FC1")), Image)
    np.testing.assert_array_equal(image_to_numpy(received), pixels)


def test_vga_frame_round_trip_over_the_wire_is_exact_and_never_a_list():
    """The per-frame path at full size: rclpy hands large uint8[] fields to us as array.array both ways (a Python
    list of 921,600 ints would cost tens of ms per frame) and the pixels come back bit for bit."""
    pixels = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    built = numpy_to_image(pixels, "rgb8")
    assert isinstance(built.data, array.array) and built.data.typecode == "B"
    received = deserialize_message(serialize_message(built), Image)
    assert isinstance(received.data, array.array) and received.data.typecode == "B"
    np.testing.assert_array_equal(image_to_rgb8(received), pixels)
    depth = np.random.default_rng(8).uniform(0.1, 50.0, (480, 640)).astype(np.float32)
    depth[0, :3] = (np.inf, np.nan, -0.0)
    received = deserialize_message(serialize_message(numpy_to_image(depth, "32FC1")), Image)
    assert isinstance(received.data, array.array)
    assert image_to_numpy(received).tobytes() == depth.tobytes()  # bit for bit, NaN and -0 included


def test_data_as_bytes_object():
    msg = Image(height=1, width=2, step=2, encoding="mono8")
    msg.data = b"\x05\x07"
    np.testing.assert_array_equal(image_to_numpy(msg), [[5, 7]])


# -- malformed messages ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "encoding, height, width, step, size, expected",
    [
        ("rgb9", 2, 2, 6, 12, "encoding"),
        ("", 2, 2, 6, 12, "encoding"),
        ("rgb8", 0, 2, 6, 0, "empty"),
        ("rgb8", 2, 0, 0, 0, "empty"),
        ("rgb8", 2, 2, 5, 12, "step"),  # step < width * 3
        ("32FC1", 2, 2, 7, 14, "step"),
        ("rgb8", 2, 2, 6, 11, "size"),  # data shorter than step * height
        ("rgb8", 2, 2, 8, 14, "size"),  # padded rows, last row short
        ("mono16", 3, 3, 6, 0, "size"),
    ],
)
def test_malformed(encoding, height, width, step, size, expected):
    msg = raw_message(encoding, height, width, step, bytes(size))
    with pytest.raises(BadInputError) as excinfo:
        image_to_numpy(msg)
    assert reason(excinfo) == expected
    with pytest.raises(BadInputError):
        image_to_rgb8(msg)


def test_malformed_messages_name_the_values():
    with pytest.raises(BadInputError, match=r"step 5 .* width 2 .* = 6"):
        image_to_numpy(raw_message("rgb8", 2, 2, 5, bytes(12)))
    with pytest.raises(BadInputError, match=r"needs 12 bytes, data has 11"):
        image_to_numpy(raw_message("rgb8", 2, 2, 6, bytes(11)))


def test_longer_data_is_accepted():
    pixels = random_pixels("mono8", 2, 3)
    np.testing.assert_array_equal(image_to_numpy(raw_message("mono8", 2, 3, 3, pixels.tobytes() + b"xx")), pixels)


# -- to RGB ---------------------------------------------------------------------------------------------------

def test_rgb8_is_returned_without_copy():
    pixels = random_pixels("rgb8", 4, 5)
    msg = numpy_to_image(pixels, "rgb8")
    rgb = image_to_rgb8(msg)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(rgb, pixels)


@pytest.mark.parametrize("encoding, pixel", [
    ("bgr8", [30, 100, 200]),
    ("rgba8", [200, 100, 30, 7]),
    ("bgra8", [30, 100, 200, 7]),
    ("rgb16", [200 * 256 + 255, 100 * 256, 30 * 256 + 1]),
    ("bgr16", [30 * 256, 100 * 256, 200 * 256]),
    ("rgba16", [200 * 256, 100 * 256, 30 * 256, 5]),
    ("bgra16", [30 * 256, 100 * 256, 200 * 256, 5]),
])
def test_colour_orders(encoding, pixel):
    channels, dtype = ENCODINGS[encoding]
    image = np.tile(np.array(pixel, dtype=dtype), (3, 4, 1))
    rgb = image_to_rgb8(numpy_to_image(image, encoding))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3)
    assert (rgb == [200, 100, 30]).all()


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(encoding):
    gray = random_pixels("mono8", 3, 4)
    rgb = image_to_rgb8(numpy_to_image(gray, encoding))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_mono16_scaled_to_8_bit(encoding):
    gray = np.array([[0, 255, 256, 65535], [1000, 32768, 40000, 512]], dtype=np.uint16)
    rgb = image_to_rgb8(numpy_to_image(gray, encoding))
    expected = np.array([[0, 0, 1, 255], [3, 128, 156, 2]], dtype=np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


@pytest.mark.parametrize("encoding", ["32FC1", "16SC1", "8UC3", "8UC4", "64FC1"])
def test_no_colour_meaning(encoding):
    with pytest.raises(BadInputError) as excinfo:
        image_to_rgb8(numpy_to_image(random_pixels(encoding, 2, 2), encoding))
    assert reason(excinfo) == "encoding" and encoding in str(excinfo.value)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample `rgb` through a Bayer filter named as ROS names it: the colours of the top-left 2x2 block."""
    channel = {"r": 0, "g": 1, "b": 2}
    raw = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return raw


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_flat_colour(pattern):
    rgb = np.empty((12, 16, 3), np.uint8)
    rgb[...] = (200, 100, 30)
    msg = numpy_to_image(mosaic(rgb, pattern), f"bayer_{pattern}8")
    np.testing.assert_array_equal(image_to_numpy(msg), mosaic(rgb, pattern))  # raw, (H, W)
    out = image_to_rgb8(msg)
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_smooth_image_and_16_bit(pattern):
    v, u = np.mgrid[0:24, 0:32]
    rgb = np.stack([100 + 2 * u, 60 + 3 * v, 200 - u - v], axis=-1).astype(np.uint8)
    out = image_to_rgb8(numpy_to_image(mosaic(rgb, pattern), f"bayer_{pattern}8"))
    error = np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2])
    assert error.max() <= 2, error.max()
    rgb16 = rgb.astype(np.uint16) * 256
    out16 = image_to_rgb8(numpy_to_image(mosaic(rgb16, pattern), f"bayer_{pattern}16"))
    assert np.abs(out16[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2]).max() <= 2


def test_yuv422_layouts():
    # four pixels: Y, and U/V shared by each pair
    y = np.array([50, 200, 90, 160], np.uint8)
    u = np.array([100, 180], np.uint8)
    v = np.array([200, 60], np.uint8)
    uyvy = np.empty((1, 4, 2), np.uint8)
    uyvy[0, :, 1] = y
    uyvy[0, 0::2, 0], uyvy[0, 1::2, 0] = u, v
    yuyv = np.ascontiguousarray(uyvy[:, :, ::-1])
    from_uyvy = image_to_rgb8(numpy_to_image(uyvy, "yuv422"))
    from_yuyv = image_to_rgb8(numpy_to_image(yuyv, "yuv422_yuy2"))
    np.testing.assert_array_equal(from_uyvy, from_yuyv)
    # V high (first pair) is red, U high (second pair) is blue
    assert (from_uyvy[0, :2, 0] > from_uyvy[0, :2, 2]).all()
    assert (from_uyvy[0, 2:, 2] > from_uyvy[0, 2:, 0]).all()
    # reading the bytes in the other layout gives different colours: the layouts are not swapped
    assert not np.array_equal(image_to_rgb8(numpy_to_image(uyvy, "yuv422_yuy2")), from_uyvy)


def test_yuv422_grey():
    uyvy = np.empty((2, 4, 2), np.uint8)
    uyvy[..., 0], uyvy[..., 1] = 128, 128
    rgb = image_to_rgb8(numpy_to_image(uyvy, "yuv422"))
    assert (rgb == rgb[..., :1]).all()
    assert abs(int(rgb[0, 0, 0]) - 1.164 * (128 - 16)) <= 1  # BT.601 video range


def test_yuv422_odd_width():
    with pytest.raises(BadInputError) as excinfo:
        image_to_rgb8(numpy_to_image(np.zeros((2, 3, 2), np.uint8), "yuv422"))
    assert reason(excinfo) == "size"


# -- compressed -----------------------------------------------------------------------------------------------

def test_png_round_trip_is_exact():
    rgb = random_pixels("rgb8", 9, 13)
    msg = rgb8_to_compressed(rgb, "png", header=Header(frame_id="cam"))
    assert isinstance(msg, CompressedImage) and msg.header.frame_id == "cam"
    assert "png" in msg.format
    np.testing.assert_array_equal(compressed_to_rgb8(msg), rgb)


def test_jpeg_keeps_colours():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:16] = (0, 255, 0)
    rgb[:, 16:] = (0, 0, 255)
    msg = rgb8_to_compressed(rgb, "jpeg", quality=95)
    assert msg.format == "rgb8; jpeg compressed bgr8"
    decoded = compressed_to_rgb8(msg)
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    centres = decoded[8, [3, 11, 20]].astype(int)
    np.testing.assert_allclose(centres, [[255, 0, 0], [0, 255, 0], [0, 0, 255]], atol=12)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8", ""])
def test_format_strings(fmt):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[...] = (10, 20, 30)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", encoded.tobytes())
    np.testing.assert_array_equal(compressed_to_rgb8(msg), rgb)


def test_grey_png():
    gray = random_pixels("mono8", 5, 6)
    msg = CompressedImage(format="mono8; png compressed mono8")
    msg.data = array.array("B", cv2.imencode(".png", gray)[1].tobytes())
    rgb = compressed_to_rgb8(msg)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_compressed_errors():
    msg = CompressedImage(format="jpeg")
    msg.data = array.array("B", b"not a jpeg at all")
    with pytest.raises(BadInputError) as excinfo:
        compressed_to_rgb8(msg)
    assert reason(excinfo) == "decode" and "17 bytes" in str(excinfo.value)
    truncated = rgb8_to_compressed(random_pixels("rgb8", 32, 32), "jpeg")
    truncated.data = truncated.data[:20]
    with pytest.raises(BadInputError) as excinfo:
        compressed_to_rgb8(truncated)
    assert reason(excinfo) == "decode"
    with pytest.raises(BadInputError) as excinfo:
        compressed_to_rgb8(CompressedImage(format="png"))
    assert reason(excinfo) == "empty"
    with pytest.raises(BadInputError) as excinfo:
        compressed_to_rgb8(CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20))
    assert reason(excinfo) == "encoding"
    with pytest.raises(BadInputError):
        rgb8_to_compressed(np.zeros((2, 2), np.uint8))
    with pytest.raises(BadInputError):
        rgb8_to_compressed(np.zeros((2, 2, 3), np.uint8), "webp2")


# -- resource bounds: images larger than max_pixels are refused, compressed ones before decoding ----------------

HUGE_IMAGES_SCRIPT = r"""
import resource, struct, sys, zlib
import cv2, numpy as np
from sensor_msgs.msg import CompressedImage
from perception_fm.errors import BadInputError
from perception_fm.ros.image_codec import compressed_to_rgb8

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

def huge_png(side):  # a valid PNG of side x side black pixels: a few hundred kB
    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * side), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")

def huge_jpeg(side):  # a small JPEG whose frame header declares side x side
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)

kind = sys.argv[1]
data = huge_png(10000) if kind == "png" else huge_jpeg(10000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    compressed_to_rgb8(CompressedImage(format=kind, data=data))
    outcome = "decoded"
except BadInputError as error:
    outcome = error.reason
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{outcome} {len(data)} {grown_mb:.1f}")
"""


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_huge_declared_image_is_refused_before_decoding(kind):
    """10000x10000 declared in a small file: refused from its header, the process's peak memory barely moves
    (decoding takes 300 MB and more)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", HUGE_IMAGES_SCRIPT, kind], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    outcome, size, grown_mb = result.stdout.split()
    assert int(size) < 1_000_000
    assert outcome == "too_large", result.stdout
    assert float(grown_mb) < 50, f"peak memory grew by {grown_mb} MB"


def test_pixel_limit_applies_to_raw_and_compressed_images_and_is_configurable():
    rgb = random_pixels("rgb8", 40, 50)  # 2000 pixels
    for message, decode in ((numpy_to_image(rgb, "rgb8"), image_to_rgb8),
                            (rgb8_to_compressed(rgb, "png"), compressed_to_rgb8),
                            (rgb8_to_compressed(rgb, "jpeg"), compressed_to_rgb8)):
        with pytest.raises(BadInputError) as excinfo:
            decode(message, max_pixels=1999)
        assert reason(excinfo) == "too_large" and "50x40" in str(excinfo.value)
        assert decode(message, max_pixels=2000).shape == (40, 50, 3)
        assert decode(message, max_pixels=0).shape == (40, 50, 3)  # 0: no limit
    # a raw image declaring a huge size is refused by its size, whatever its data
    huge = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=b"\x00" * 12)
    with pytest.raises(BadInputError) as excinfo:
        image_to_rgb8(huge)
    assert reason(excinfo) == "too_large"
    short = Image(height=4, width=4, encoding="rgb8", step=12, data=b"\x00" * 12)
    with pytest.raises(BadInputError) as excinfo:
        image_to_rgb8(short)
    assert reason(excinfo) == "size"


def test_header_sizes_are_read_without_decoding():
    from perception_fm.ros.image_codec import compressed_size, message_bytes

    rgb = random_pixels("rgb8", 30, 70)
    for fmt in ("png", "jpeg"):
        data = message_bytes(rgb8_to_compressed(rgb, fmt).data)
        assert compressed_size(data) == (fmt, 70, 30)
    for junk in (b"GIF89a" + b"\x00" * 30, b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n\x00"):
        with pytest.raises(BadInputError) as excinfo:
            compressed_size(np.frombuffer(junk, np.uint8))
        assert reason(excinfo) == "decode"


def corrupt_frames() -> list[CompressedImage]:
    rgb = random_pixels("rgb8", 64, 64)
    png = bytearray(rgb8_to_compressed(rgb, "png").data.tobytes())
    jpeg = bytearray(rgb8_to_compressed(rgb, "jpeg").data.tobytes())
    frames = []
    for index in range(10):
        bad_idat = bytearray(png)
        bad_idat[40:60] = bytes([index]) * 20
        bad_crc = bytearray(png)
        bad_crc[29] ^= 0xFF
        bad_jpeg = bytearray(jpeg)
        bad_jpeg[300:400] = b"\x55" * 100
        frames += [CompressedImage(format="png", data=bytes(bad_idat)), CompressedImage(format="png", data=bytes(bad_crc)),
                   CompressedImage(format="jpeg", data=bytes(bad_jpeg))]
    return frames


def test_decoder_warnings_do_not_reach_stderr_and_are_in_the_error(capfd):
    """libpng/libjpeg/OpenCV print from C, once per bad frame, bypassing the node's rate-limited drop log."""
    reasons = []
    for frame in corrupt_frames():
        try:
            compressed_to_rgb8(frame)
            reasons.append("decoded")  # a JPEG with corrupt data the decoder can still decode
        except BadInputError as error:
            reasons.append(error.reason)
            if "png" in frame.format:
                assert "libpng" in str(error)
    err = capfd.readouterr().err
    assert err == "", err
    assert reasons.count("decode") == 20 and reasons.count("decoded") == 10


def test_other_stderr_output_during_a_decode_is_kept(monkeypatch, capfd):
    import os

    from perception_fm.ros import image_codec

    def noisy_decoder(data, flags):  # stands for the C decoder and another thread logging meanwhile
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\n[INFO] [1.0] [other_node]: hello\n")
        return None

    monkeypatch.setattr(image_codec.cv2, "imdecode", noisy_decoder)
    with pytest.raises(BadInputError) as excinfo:
        compressed_to_rgb8(rgb8_to_compressed(random_pixels("rgb8", 8, 8), "png"))
    assert "iCCP" in str(excinfo.value)
    assert capfd.readouterr().err == "[INFO] [1.0] [other_node]: hello\n"


def test_process_wide_pixel_limit_comes_from_the_environment():
    import os
    import subprocess
    import sys

    code = ("from perception_fm.ros.image_codec import MAX_IMAGE_PIXELS, image_to_rgb8; print(MAX_IMAGE_PIXELS);"
            "from sensor_msgs.msg import Image;"
            "from perception_fm.errors import BadInputError\n"
            "try: image_to_rgb8(Image(height=10, width=10, encoding='rgb8', step=30, data=bytes(300)))\n"
            "except BadInputError as error: print(error.reason)")
    env = {**os.environ, "PERCEPTION_FM_MAX_IMAGE_PIXELS": "99"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.stdout.split() == ["99", "too_large"], result.stderr
    env.pop("PERCEPTION_FM_MAX_IMAGE_PIXELS")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.stdout.split() == [str(7680 * 4320)], result.stderr


@pytest.mark.ros
def test_a_node_fed_corrupt_frames_logs_only_its_rate_limited_drop_lines(da3_small_checkpoint):
    """Over DDS: 30 corrupt PNG/JPEG frames to depth_node; every one is counted, and the node's log holds no raw
    libpng/libjpeg/OpenCV lines (they were once printed per frame, past the drop log's rate limit)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_probe import Probe, diagnostics_values, start_node, stop_node

    probe = Probe()
    probe.record(DiagnosticArray, "/diagnostics")
    node = start_node("perception_fm.nodes.depth_node", "-p", f"weights:={da3_small_checkpoint}",
                      "-p", "process_res:=56", "-p", "input_qos:=reliable", "-p", "image_transport:=compressed",
                      "-r", "image/compressed:=/codec_test/image/compressed")
    try:
        publisher = probe.publisher(CompressedImage, "/codec_test/image/compressed")

        def values():
            assert node.poll() is None, "the node process died:\n" + stop_node(node)
            return diagnostics_values(probe, "depth_node") or {}

        probe.wait_until(lambda: values().get("_message") == "ok", 120, "depth_node reporting a loaded model")
        probe.wait_until(lambda: publisher.get_subscription_count() > 0, 30, "subscription matched")
        for sent, frame in enumerate(corrupt_frames(), start=1):  # one at a time: none is lost in a queue
            publisher.publish(frame)
            probe.wait_until(lambda: int(values().get("received", 0)) >= sent, 60, f"frame {sent} received")

        def counted():
            current = values()
            return sum(int(current.get(key, 0)) for key in ("processed", "dropped_decode", "dropped_stale",
                                                            "dropped_error")) == 30
        probe.wait_until(counted, 60, "every frame processed or counted")
        assert int(values().get("dropped_decode", 0)) >= 1
    finally:
        log = stop_node(node)
        probe.close()
    raw = [line for line in log.splitlines()
           if re.match(r"\s*(libpng|Corrupt JPEG|Premature end|\[\s*(WARN|ERROR):\d+@)", line)]
    assert raw == [], log
    assert "Traceback" not in log


# -- max_image_pixels: a ROS parameter of every image-decoding node, read by the replay too -------------------

IMAGE_NODES = ("depth_node", "concept_node", "object_mesh_node", "body_node")


@pytest.mark.parametrize("node_type", IMAGE_NODES)
def test_every_image_node_has_a_max_image_pixels_parameter(node_type):
    from perception_fm.graph import NODE_TYPES
    from perception_fm.ros.image_codec import MAX_IMAGE_PIXELS

    table = {param.name: param for param in NODE_TYPES[node_type].param_table()}
    param = table["max_image_pixels"]
    assert param.default == MAX_IMAGE_PIXELS and param.min == 0  # the process default; 0 = no limit
    with pytest.raises(ValueError):
        param.check(-1)


@pytest.mark.ros
def test_a_node_with_a_small_max_image_pixels_drops_a_normal_frame_as_too_large(da3_small_checkpoint):
    """Over DDS: depth_node with max_image_pixels 3000 gets a 64x48 (3072 px) frame: counted as too_large on
    /diagnostics (WARN), not processed; raising the limit at runtime lets the next frame through."""
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_probe import Probe, diagnostics_values, start_node, stop_node

    from perception_fm.msg import DepthInfo

    probe = Probe()
    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(DepthInfo, "/depth/info")
    node = start_node("perception_fm.nodes.depth_node", "-p", f"weights:={da3_small_checkpoint}",
                      "-p", "process_res:=56", "-p", "input_qos:=reliable", "-p", "max_image_pixels:=3000",
                      "-r", "image:=/pixels_test/image")
    try:
        publisher = probe.publisher(Image, "/pixels_test/image")

        def values():
            assert node.poll() is None, "the node process died:\n" + stop_node(node)
            return diagnostics_values(probe, "depth_node") or {}

        probe.wait_until(lambda: values().get("_message") == "ok", 120, "depth_node reporting a loaded model")
        probe.wait_until(lambda: publisher.get_subscription_count() > 0, 30, "subscription matched")
        frame = numpy_to_image(random_pixels("rgb8", 48, 64), "rgb8")
        publisher.publish(frame)
        probe.wait_until(lambda: values().get("dropped_too_large") == "1", 60, "the frame counted as too_large")
        assert values()["_level"] == 1 and "too_large 1" in values()["_message"], values()
        assert int(values().get("processed", 0)) == 0 and probe.received("/depth/info") == []
    finally:
        log = stop_node(node)
        probe.close()
    assert node.returncode == 0 and "Traceback" not in log, log
    assert "dropped a frame (too_large)" in log and "max_image_pixels" in log, log  # the reason, rate-limited


def _replay_with_limit(tmp_path, nodes: dict, limited: str):
    import yaml

    from perception_fm.graph import load_graph
    from perception_fm.replay.runner import replay

    nodes = {name: {**entry, "parameters": {**entry["parameters"],
                                            **({"max_image_pixels": 3000} if name == limited else {})}}
             for name, entry in nodes.items()}
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    report = replay(sample_bag_for(tmp_path), load_graph(path), tmp_path / "out", progress=False)
    return {node["node"]: node for node in report.nodes}


def sample_bag_for(tmp_path):
    from scripted_segmentation import SAMPLE

    from perception_fm.replay.synthetic import write_sample_bag

    path = tmp_path / "bag"
    write_sample_bag(path, SAMPLE)  # 64x48 = 3072 px: over a limit of 3000
    return path


def test_replay_of_depth_node_refuses_images_over_max_image_pixels(tmp_path, da3_small_checkpoint):
    from perception_fm.replay.synthetic import TOPICS

    nodes = {"depth_node": {"remappings": {"image": TOPICS["image"], "camera_info": TOPICS["camera_info"]},
                            "parameters": {"weights": str(da3_small_checkpoint), "process_res": 56}}}
    node = _replay_with_limit(tmp_path, nodes, "depth_node")["depth_node"]
    assert node["processed"] == 0 and node["dropped"] == {"too_large": node["frames"]} and node["frames"] > 0, node
    assert node["parameters"]["max_image_pixels"] == 3000
    assert any("too_large" in error and "max_image_pixels" in error for error in node["errors"]), node


@pytest.mark.parametrize("limited", ["concept_node", "object_mesh_node", "body_node"])
def test_replay_of_instance_nodes_refuses_images_over_max_image_pixels(tmp_path, limited):
    import scripted_meshes
    from scripted_segmentation import use_in_default_manager
    from test_replay_meshes import NODES

    from perception_fm.hookspecs import Task
    from perception_fm.plugin_manager import default_manager

    use_in_default_manager()
    manager = default_manager()
    if "scripted-objects" not in {entry.spec.name for entry in manager.models(Task.OBJECT_MESH)}:
        manager.register(scripted_meshes, name="scripted-meshes")
    report = _replay_with_limit(tmp_path, NODES, limited)
    node = report[limited]
    assert node["dropped"].get("too_large", 0) >= 1 and node["processed"] == 0, node
    assert set(node["dropped"]) == {"too_large"}, node
    others = [report[name] for name in NODES if name not in (limited, "concept_node")]
    if limited != "concept_node":  # the nodes without the limit still work
        assert report["concept_node"]["processed"] > 0 and all(other["processed"] > 0 for other in others), report
