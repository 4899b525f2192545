"""numpy ⇄ sensor_msgs/Image and sensor_msgs/CompressedImage, without cv_bridge.

Decoding is a view over ``msg.data`` wherever it can be (rows unpadded or padded, byte order native): no copy,
no per-pixel Python. The returned arrays alias the message's buffer; copy them before changing the message.

Building: rclpy's generated setter for ``uint8[]`` fields (Kilted) keeps an ``array.array('B')`` as it is when
the message checks its fields, and otherwise (the default, ``ROS_PYTHON_CHECK_FIELDS`` unset) copies anything
through ``array.array('B', value)``: one memcpy for array.array/bytes/bytearray, but element by element for
numpy arrays, memoryviews and lists (tens of ms for a VGA frame). ``bytes`` is in turn checked element by
element when fields are checked. So builders here fill one ``array.array('B')`` (``to_uint8_array``) and hand it
to a message made with ``check_fields=True`` (``new_message``): no per-element work and no second copy in
either mode. Such messages check later field assignments too.

Resource bounds: an image is refused (BadInputError 'too_large') when it has more than `max_pixels` pixels,
and a compressed one before it is decoded, from the size its PNG/JPEG header declares: a 300 kB PNG may declare
10000x10000 pixels, and decoding it would take gigabytes. libpng, libjpeg and OpenCV print warnings about bad
compressed data straight to stderr from C, one per frame; those lines are taken out of the process's stderr
while a frame decodes and put into the decode error instead, which the node counts and logs rate-limited.
"""
from __future__ import annotations

import array
import os
import re
import struct
import sys
import tempfile
import threading
from typing import NamedTuple

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from perception_fm.errors import BadInputError


class Encoding(NamedTuple):
    channels: int
    dtype: np.dtype  # of one channel, native byte order


def _table() -> dict[str, Encoding]:
    u8, u16 = np.dtype(np.uint8), np.dtype(np.uint16)
    table = {
        "rgb8": Encoding(3, u8), "bgr8": Encoding(3, u8), "rgba8": Encoding(4, u8), "bgra8": Encoding(4, u8),
        "rgb16": Encoding(3, u16), "bgr16": Encoding(3, u16), "rgba16": Encoding(4, u16),
        "bgra16": Encoding(4, u16),
        "mono8": Encoding(1, u8), "mono16": Encoding(1, u16),
        # packed 4:2:2, two bytes per pixel: UYVY and YUYV
        "yuv422": Encoding(2, u8), "yuv422_yuy2": Encoding(2, u8),
    }
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        table[f"bayer_{pattern}8"] = Encoding(1, u8)
        table[f"bayer_{pattern}16"] = Encoding(1, u16)
    for depth, dtype in (("8U", np.uint8), ("8S", np.int8), ("16U", np.uint16), ("16S", np.int16),
                         ("32S", np.int32), ("32F", np.float32), ("64F", np.float64)):
        for channels in (1, 2, 3, 4):
            table[f"{depth}C{channels}"] = Encoding(channels, np.dtype(dtype))
    return table


# encoding name → (channels, dtype): the one place that says how an encoding is laid out.
ENCODINGS: dict[str, Encoding] = _table()

# OpenCV's old Bayer names describe the pattern one pixel down and right of ROS's (which names the top-left
# 2x2 block); these codes are the ones that match ROS (checked by tests/test_image_codec.py). OpenCV 5 also has
# COLOR_BayerRGGB2RGB & co with ROS's meaning; the old names are used as they exist in OpenCV 4 too.
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
_YUV_TO_RGB = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2}
_COLOR_TO_RGB = {  # after 16-bit encodings are brought to 8 bits
    "bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB,
}
_NATIVE_BIG = np.little_endian is False


def new_message(cls):
    """An empty message whose uint8[] setters keep an ``array.array('B')`` as it is instead of copying it
    (field checks on; rclpy without the ``check_fields`` argument always checks and keeps it too)."""
    try:
        return cls(check_fields=True)
    except (AssertionError, TypeError):
        return cls()


def to_uint8_array(data: np.ndarray) -> array.array:
    """Bytes of `data` (C order) as the ``array.array('B')`` that rclpy's uint8[] setters take without a
    per-element conversion. One memcpy (plus one for a non-contiguous input)."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(data).reshape(-1).view(np.uint8) if data.size else b"")
    return out


def message_bytes(data) -> np.ndarray:
    """``msg.data`` (array.array, bytes, memoryview, or a list) as a flat uint8 array; a view when it has a
    buffer."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as error:
            raise BadInputError("size", f"message data is not a byte sequence ({type(data).__name__})") from error


def _lookup(encoding: str) -> Encoding:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise BadInputError(
            "encoding", f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        ) from None


# -- decoding -------------------------------------------------------------------------------------------------

def _default_max_pixels() -> int:
    """8K UHD (7680x4320, 33.2 Mpx) unless PERCEPTION_FM_MAX_IMAGE_PIXELS says otherwise (0 = no limit)."""
    text = os.environ.get("PERCEPTION_FM_MAX_IMAGE_PIXELS", "").strip()
    try:
        return max(int(text), 0) if text else 7680 * 4320
    except ValueError:  # said once, at import; the safe default applies
        print(f"perception_fm: PERCEPTION_FM_MAX_IMAGE_PIXELS={text!r} is not a whole number of pixels; using "
              f"{7680 * 4320} (8K)", file=sys.stderr)
        return 7680 * 4320


# Pixel limit of decoded images in this process (callers may pass their own max_pixels); 0 = no limit.
MAX_IMAGE_PIXELS = _default_max_pixels()


def _check_pixels(what: str, width: int, height: int, max_pixels: int | None, before: str = "") -> None:
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if max_pixels > 0 and width * height > max_pixels:
        raise BadInputError(
            "too_large", f"{what} of {width}x{height} = {width * height:,} px is larger than "
                         f"max_image_pixels = {max_pixels:,} px{before}")  # exact: '0.0 Mpx' said nothing


def image_to_numpy(msg: Image) -> np.ndarray:
    """(H, W) for one-channel encodings, else (H, W, C), in the encoding's dtype (native byte order).

    A view over ``msg.data`` (C-contiguous when rows are unpadded, row-strided when ``step`` pads them) unless
    the message's byte order differs from this machine's, which costs one converting copy. Bayer and yuv422
    images come back raw: (H, W) and (H, W, 2) uint8.
    """
    encoding = _lookup(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise BadInputError("empty", f"{msg.encoding} image of {width}x{height} pixels has no pixels")
    itemsize = encoding.dtype.itemsize
    pixel_bytes = encoding.channels * itemsize
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise BadInputError(
            "step", f"{msg.encoding} image step {step} is smaller than width {width} x {pixel_bytes} bytes "
                    f"per pixel = {row_bytes}")
    data = message_bytes(msg.data)
    if data.size < step * height:
        raise BadInputError(
            "size", f"{msg.encoding} image of {width}x{height} with step {step} needs {step * height} bytes, "
                    f"data has {data.size}")
    big = bool(msg.is_bigendian) and itemsize > 1
    dtype = encoding.dtype.newbyteorder(">" if big else "<") if itemsize > 1 else encoding.dtype
    shape = (height, width) if encoding.channels == 1 else (height, width, encoding.channels)
    if step == row_bytes:
        image = data[: step * height].view(dtype).reshape(shape)
    else:
        strides = (step, pixel_bytes) if encoding.channels == 1 else (step, pixel_bytes, itemsize)
        image = np.ndarray(shape, dtype=dtype, buffer=data, offset=0, strides=strides)
    if itemsize > 1 and big != _NATIVE_BIG:
        image = image.astype(encoding.dtype)  # byte-swapping copy into native order
    return image


def _to_8bit(image: np.ndarray) -> np.ndarray:
    """16-bit → 8-bit by keeping the high byte (value / 256), as image viewers do for mono16."""
    return (image >> 8).astype(np.uint8)


def image_to_rgb8(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, what the models take.

    rgb8 comes back as ``image_to_numpy`` gives it (no copy). bgr/rgba/bgra (8 or 16 bit), mono8/mono16/8UC1/
    16UC1, yuv422 (UYVY), yuv422_yuy2 (YUYV) and Bayer (demosaiced) are converted; 16-bit values are scaled to
    8 bits (value / 256). Encodings without a colour meaning (8UC3, 32FC1, ...) raise BadInputError('encoding');
    more than `max_pixels` pixels (None: MAX_IMAGE_PIXELS; 0 = no limit) BadInputError('too_large').
    """
    name = msg.encoding
    _check_pixels(f"{name} image", int(msg.width), int(msg.height), max_pixels)
    image = image_to_numpy(msg)
    if name == "rgb8":
        return image
    if name.startswith("bayer_"):
        pattern = name[len("bayer_"):-2] if name.endswith("16") else name[len("bayer_"):-1]
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise BadInputError("size", f"{name} image of {image.shape[1]}x{image.shape[0]} is too small to "
                                        "demosaic (needs 2x2)")
        rgb = cv2.cvtColor(image, _BAYER_TO_RGB[pattern])
        return _to_8bit(rgb) if rgb.dtype == np.uint16 else rgb
    if name in _YUV_TO_RGB:
        if image.shape[1] % 2:
            raise BadInputError("size", f"{name} image width {image.shape[1]} must be even (2 pixels per "
                                        "4-byte group)")
        return cv2.cvtColor(image, _YUV_TO_RGB[name])
    if name in ("mono8", "8UC1", "mono16", "16UC1"):
        gray = _to_8bit(image) if image.dtype == np.uint16 else image
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    match = re.fullmatch(r"(rgb|bgr|rgba|bgra)16", name)
    if match:
        image = _to_8bit(image)
        order = match.group(1)
        return np.ascontiguousarray(image) if order == "rgb" else cv2.cvtColor(image, _COLOR_TO_RGB[order])
    if name in ("bgr8", "rgba8", "bgra8"):
        return cv2.cvtColor(image, _COLOR_TO_RGB[name[:-1]])
    raise BadInputError("encoding", f"image encoding {name!r} has no colour meaning; publish rgb8, bgr8, rgba8, "
                                    "bgra8, mono8, mono16, yuv422 or bayer_*")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the image size): C0-CF but C4 (DHT), C8 (JPG) and CC (DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM stand alone
_JPEG_MAX_SEGMENTS = 4096  # before the frame header; real files have a few dozen


def compressed_size(data: np.ndarray) -> tuple[str, int, int]:
    """('png' | 'jpeg', width, height) as the header of PNG or JPEG bytes declares them, read without
    decoding; BadInputError('decode') for other or broken data."""
    head = bytes(data[:64])
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise BadInputError("decode", f"PNG of {data.size} bytes has no IHDR header chunk")
        width, height = struct.unpack(">II", head[16:24])
        return "png", width, height
    if head.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(data))
    raise BadInputError("decode", f"{data.size} bytes are neither PNG nor JPEG (they start with {head[:8]!r})")


def _jpeg_size(data: np.ndarray) -> tuple[int, int]:
    size, position = data.size, 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        while position < size and data[position] == 0xFF:  # a marker, after any fill bytes
            position += 1
        if position >= size or data[position - 1] != 0xFF:
            break
        marker = int(data[position])
        position += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA) or position + 2 > size:  # end of image / scan data before a frame header
            break
        length = int(data[position]) << 8 | int(data[position + 1])
        if marker in _JPEG_SOF:
            if position + 7 > size:
                break
            height = int(data[position + 3]) << 8 | int(data[position + 4])
            width = int(data[position + 5]) << 8 | int(data[position + 6])
            if height == 0:  # the height comes later in a DNL marker: libjpeg does not support it
                raise BadInputError("decode", "JPEG frame header declares height 0 (DNL), which is not supported")
            return width, height
        position += length
    raise BadInputError("decode", f"JPEG of {size} bytes has no frame header (SOF) before its scan data")


# What libpng, libjpeg and OpenCV's own logging print about bad compressed data (stderr, from C).
_CODEC_LINE = re.compile(
    rb"libpng (warning|error)|\[\s*(WARN|ERROR|INFO|DEBUG|VERBOSE|FATAL):\d+@|Corrupt JPEG data|Premature end of "
    rb"JPEG|Invalid SOS parameters|Inconsistent progression|Warning: unknown JFIF|Unknown Adobe color|"
    rb"Application transferred too")


class _CodecMessages:
    """Takes what the C decoders print to stderr out of the process's stderr while a frame decodes.

    fd 2 points at a scratch file during the decode (decodes are serialised by a lock: fd 2 is the process's);
    afterwards the codec lines are returned, and anything else another thread wrote meanwhile (a ROS log line)
    is written to the real stderr, later but not lost.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._scratch = None

    def decode(self, data: np.ndarray, flags: int) -> tuple[np.ndarray | None, list[str]]:
        with self._lock:
            try:
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryFile(buffering=0)
                sys.stderr.flush()  # Python's buffered text goes out before the switch
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no usable stderr: decode as it is
                return cv2.imdecode(data, flags), []
            scratch = self._scratch.fileno()
            try:
                os.dup2(scratch, 2)
                try:
                    return cv2.imdecode(data, flags), self._collect(saved)
                except BaseException:
                    self._collect(saved)
                    raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    def _collect(self, real_stderr: int) -> list[str]:
        scratch = self._scratch.fileno()
        length = os.lseek(scratch, 0, os.SEEK_END)
        os.lseek(scratch, 0, os.SEEK_SET)
        captured = os.read(scratch, length) if length else b""
        os.ftruncate(scratch, 0)
        os.lseek(scratch, 0, os.SEEK_SET)
        codec, other = [], []
        for line in captured.splitlines(keepends=True):
            (codec if _CODEC_LINE.match(line.lstrip()) else other).append(line)
        if other:
            os.write(real_stderr, b"".join(other))
        return [line.decode(errors="replace").strip() for line in codec]


_CODEC_MESSAGES = _CodecMessages()
_IMREAD_RGB = cv2.IMREAD_COLOR_RGB if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.IMREAD_COLOR


def compressed_to_rgb8(msg: CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a jpeg or png CompressedImage (grey and 16-bit sources are brought to 8-bit
    RGB). Undecodable data raises BadInputError('decode'), with what the decoder said; more than `max_pixels`
    pixels declared in the header (None: MAX_IMAGE_PIXELS; 0 = no limit) BadInputError('too_large'), before any decoding. Warnings about
    data the decoder could still decode (e.g. extraneous bytes, common from USB cameras) are not printed."""
    # format: 'jpeg', 'png', 'rgb8; jpeg compressed bgr8', ...; the decoder recognises jpeg/png by their bytes.
    if "compresseddepth" in msg.format.lower():
        raise BadInputError("encoding", f"compressed format {msg.format!r} is a depth image, not a colour image")
    data = message_bytes(msg.data)
    if data.size == 0:
        raise BadInputError("empty", f"compressed image ({msg.format!r}) has no data")
    kind, width, height = compressed_size(data)
    _check_pixels(f"{kind} image", width, height, max_pixels, before="; refused before decoding")
    try:
        rgb, said = _CODEC_MESSAGES.decode(data, _IMREAD_RGB)
    except cv2.error as error:
        reason = " ".join(str(error).split())
        raise BadInputError("decode", f"could not decode {data.size} bytes of {msg.format!r}: {reason}") from error
    if rgb is None or rgb.size == 0:
        detail = f": {'; '.join(said[:3])}" if said else ""
        raise BadInputError("decode", f"could not decode {data.size} bytes of {msg.format!r}{detail}")
    if _IMREAD_RGB == cv2.IMREAD_COLOR:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    return rgb


# -- building -------------------------------------------------------------------------------------------------

def numpy_to_image(array: np.ndarray, encoding: str, header=None) -> Image:
    """An Image holding `array` ((H, W) or (H, W, C) as the encoding says), rows unpadded, little-endian.

    The array's dtype must be the encoding's; float arrays are cast to a float encoding's precision (e.g.
    float64 → 32FC1). One copy of the pixels (two for a non-contiguous array).
    """
    layout = _lookup(encoding)
    image = np.asarray(array)
    if image.dtype != layout.dtype:
        if image.dtype.kind == "f" and layout.dtype.kind == "f":
            image = image.astype(layout.dtype)
        elif image.dtype.newbyteorder("=") == layout.dtype:
            pass  # same type, other byte order: handled below
        else:
            raise BadInputError("encoding", f"{encoding} holds {layout.dtype}, got a {image.dtype} array")
    if image.ndim == 3 and layout.channels == 1 and image.shape[2] == 1:
        image = image[:, :, 0]
    expected = "(H, W)" if layout.channels == 1 else f"(H, W, {layout.channels})"
    if image.ndim != (2 if layout.channels == 1 else 3) or (layout.channels > 1 and image.shape[2] != layout.channels):
        raise BadInputError("encoding", f"{encoding} needs a {expected} array, got shape {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise BadInputError("empty", f"{encoding} array of shape {image.shape} has no pixels")
    if image.dtype.byteorder == ">" or (image.dtype.byteorder == "=" and not np.little_endian):
        image = image.astype(image.dtype.newbyteorder("<"))  # messages built here are little-endian
    msg = new_message(Image)
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, encoding, 0
    msg.step = width * layout.channels * layout.dtype.itemsize
    msg.data = to_uint8_array(image)
    return msg


_JPEG_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}


def rgb8_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, header=None) -> CompressedImage:
    """A CompressedImage of an (H, W, 3) uint8 RGB image, format string as image_transport writes it
    ('rgb8; jpeg compressed bgr8'). `quality` is the JPEG quality (0-100); png ignores it."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise BadInputError("encoding", f"rgb8_to_compressed takes (H, W, 3) uint8 RGB, got {image.dtype} "
                                        f"{image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadInputError("empty", f"image of shape {image.shape} has no pixels")
    kind = fmt.lower()
    if kind not in _JPEG_FORMATS:
        raise BadInputError("encoding", f"compressed format must be jpeg or png, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if _JPEG_FORMATS[kind] == ".jpg" else []
    ok, encoded = cv2.imencode(_JPEG_FORMATS[kind], cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise BadInputError("decode", f"OpenCV could not encode a {image.shape} image as {fmt}")
    msg = new_message(CompressedImage)
    if header is not None:
        msg.header = header
    msg.format = f"rgb8; {'jpeg' if kind == 'jpg' else kind} compressed bgr8"
    msg.data = to_uint8_array(encoded)
    return msg
