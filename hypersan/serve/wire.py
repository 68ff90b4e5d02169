"""What clients send the server, decoded and checked: images as nested uint8 arrays or base64 PNG, and Open
Inference Protocol (KServe V2) input tensors. Everything here raises InputError with a message that says what
was wrong and what is expected; nothing is allocated beyond the bounds the caller gives.

PNG is decoded here, not by an imaging library: the server needs 8-bit grayscale / RGB (with or without alpha),
non-interlaced, of one known size, and a decoder of that subset is short. It checks every chunk's CRC, refuses a
size other than the model's *before* inflating anything, and inflates at most the bytes such an image can hold,
so a compressed "bomb" costs nothing; Pillow would add a large C attack surface for no gain.
"""
from __future__ import annotations

import base64
import binascii
import math
import zlib
from typing import Any, Sequence

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# color type -> (channels in the file, channels kept: alpha is dropped)
_PNG_COLOR = {0: (1, 1), 2: (3, 3), 4: (2, 1), 6: (4, 3)}
_PNG_COLOR_NAMES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
V2_DATATYPES = ("UINT8", "FP32")


class InputError(ValueError):
    """A request whose images or tensors are malformed; the message says what was wrong and what is expected."""


# ------------------------------------------------------------------ PNG

def decode_png(data: bytes, channels: int, height: int, width: int) -> np.ndarray:
    """(channels, height, width) uint8 pixels of an 8-bit grayscale or RGB PNG (alpha dropped) of exactly that
    size; InputError otherwise."""
    want = f"an 8-bit {'grayscale' if channels == 1 else 'RGB'} PNG of {width}x{height} pixels"
    if not data.startswith(PNG_SIGNATURE):
        raise InputError(f"not a PNG file (it does not start with the PNG signature); send {want}")
    pos, ihdr, idat = len(PNG_SIGNATURE), None, []
    while True:
        if pos + 12 > len(data):
            raise InputError("the PNG is truncated (it ends before its IEND chunk)")
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if length >= 1 << 31 or end > len(data):
            raise InputError("the PNG is truncated or corrupt (a chunk runs past the end of the data)")
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(ctype + body) != int.from_bytes(data[end - 4:end], "big"):
            raise InputError(f"the PNG is corrupt (the CRC of its {ctype.decode('latin-1')!r} chunk does not match)")
        pos = end
        if ihdr is None and ctype != b"IHDR":
            raise InputError("the PNG is corrupt (its first chunk is not IHDR)")
        if ctype == b"IHDR":
            if ihdr is not None or length != 13:
                raise InputError("the PNG is corrupt (a malformed or repeated IHDR chunk)")
            ihdr = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"), *body[8:13])
            w, h, depth, color, compression, filt, interlace = ihdr
            if (w, h) != (width, height):
                raise InputError(f"the PNG is {w}x{h} pixels; this subnet takes {want}")
            if color not in _PNG_COLOR or depth != 8:
                raise InputError(f"the PNG is {depth}-bit {_PNG_COLOR_NAMES.get(color, f'color type {color}')}; "
                                 f"send {want}")
            if _PNG_COLOR[color][1] != channels:
                raise InputError(f"the PNG is {_PNG_COLOR_NAMES[color]}, but this subnet takes {channels}-channel "
                                 f"images: send {want}")
            if compression != 0 or filt != 0:
                raise InputError("the PNG uses an unknown compression or filter method; it is corrupt")
            if interlace != 0:
                raise InputError(f"the PNG is interlaced (Adam7); send {want}, not interlaced")
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        elif not ctype[0] & 0x20:  # a critical chunk this decoder does not know (PLTE is refused with color 3)
            raise InputError(f"the PNG has a chunk {ctype.decode('latin-1')!r} this server cannot read; send {want}")
    _, _, _, color, *_ = ihdr
    bpp, keep = _PNG_COLOR[color]
    stride = width * bpp
    size = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), size + 1)  # at most one byte more than such an image holds
    except zlib.error as e:
        raise InputError(f"the PNG's image data is corrupt ({e})") from None
    if len(raw) != size:
        raise InputError(f"the PNG's image data holds {'more' if len(raw) > size else 'fewer'} bytes than a "
                         f"{width}x{height} {_PNG_COLOR_NAMES[color]} image; it is corrupt")
    pixels = _unfilter(raw, height, stride, bpp)
    return np.ascontiguousarray(pixels.reshape(height, width, bpp)[:, :, :keep].transpose(2, 0, 1))


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (none, sub, up, average, Paeth)."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for r in range(height):
        start = r * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif kind != 0:
            raise InputError(f"the PNG is corrupt (row {r} has the unknown filter type {kind})")
        out[r] = np.frombuffer(bytes(line), dtype=np.uint8)
        prev = line
    return out


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale (C=1) or RGB (C=3) PNG of (C, H, W) or (H, W) uint8 pixels (filter none)."""
    a = np.asarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        a = a[None]
    c, h, w = a.shape
    if c not in (1, 3):
        raise ValueError(f"a PNG here holds 1 or 3 channels, not {c}")
    rows = a.transpose(1, 2, 0).reshape(h, w * c)
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0 if c == 1 else 2, 0, 0, 0])
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ v1 images

def _shape_text(shape: Sequence[int]) -> str:
    return "".join(f"[{d}]" for d in shape)


def _integers(obj: Any, what: str) -> np.ndarray:
    """A nested list of JSON integers as an int64 array; InputError for ragged lists, floats, bools, strings."""
    try:
        a = np.asarray(obj)
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"{what} is not a rectangular array of numbers (its rows differ in length, or it holds "
                         "something other than numbers)") from None
    if a.dtype.kind not in "iu":
        found = {"b": "true/false values", "f": "non-integer numbers", "U": "strings", "O": "mixed values"}
        raise InputError(f"{what} holds {found.get(a.dtype.kind, a.dtype.name)}; pixels are integers from 0 to 255 "
                         "(uint8)")
    return a


def parse_image(obj: Any, shape: Sequence[int], index: int, max_png_bytes: int = 1 << 20) -> np.ndarray:
    """One image of a v1 request as (C, H, W) uint8: a nested array [C][H][W] (or [H][W] for one channel) of
    integers 0..255, or a base64-encoded PNG string."""
    c, h, w = shape
    what = f"images[{index}]"
    accepted = _shape_text(shape) + (f" (or {_shape_text(shape[1:])})" if c == 1 else "")
    if isinstance(obj, str):
        if len(obj) > max_png_bytes * 4 // 3 + 4:
            raise InputError(f"{what}: a PNG of {len(obj)} base64 characters is larger than a {w}x{h} image can "
                             "need; send the image at the subnet's size")
        try:
            data = base64.b64decode(obj, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{what} is a string but not valid base64; send a base64-encoded PNG, or a nested "
                             f"array of uint8 {accepted}") from None
        try:
            return decode_png(data, c, h, w)
        except InputError as e:
            raise InputError(f"{what}: {e}") from None
    if not isinstance(obj, list):
        raise InputError(f"{what} is a JSON {type(obj).__name__}; send a nested array of uint8 {accepted} or a "
                         "base64-encoded PNG string")
    a = _integers(obj, what)
    if a.ndim == 2 and c == 1:
        a = a[None]
    if tuple(a.shape) != tuple(shape):
        raise InputError(f"{what} has shape {list(a.shape)}; this subnet takes {accepted}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise InputError(f"{what} has values from {a.min()} to {a.max()}; pixels are integers from 0 to 255 (uint8)")
    return a.astype(np.uint8)


def parse_images(images: Any, shape: Sequence[int], max_images: int) -> np.ndarray:
    """(N, C, H, W) uint8 from a v1 request's "images" list."""
    if not isinstance(images, list) or not images:
        raise InputError("images must be a non-empty list of images (nested uint8 arrays or base64 PNG strings)")
    if len(images) > max_images:
        raise InputError(f"{len(images)} images in one request; at most {max_images} are accepted: split the batch")
    return np.stack([parse_image(im, shape, i) for i, im in enumerate(images)])


# ------------------------------------------------------------------ V2 tensors

def parse_v2_images(tensor: dict, shape: Sequence[int], max_images: int) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1] from a V2 input tensor {"name", "shape", "datatype", "data"}: datatype
    UINT8 (pixels 0..255) or FP32 (pixels / 255), shape [N, C, H, W] (or [N, H, W] for one channel), data
    flattened in row-major order or nested."""
    c, h, w = shape
    accepted = f"[N, {c}, {h}, {w}]" + (f" or [N, {h}, {w}]" if c == 1 else "")
    name = tensor.get("name")
    dims, dtype = tensor.get("shape"), tensor.get("datatype")
    if dtype not in V2_DATATYPES:
        raise InputError(f"input {name!r} has datatype {dtype!r}; send UINT8 (pixels 0..255) or FP32 (pixels / 255, "
                         "in [0, 1])")
    if (not isinstance(dims, list) or not all(type(d) is int and d >= 0 for d in dims)
            or len(dims) not in ((3, 4) if c == 1 else (4,))):
        raise InputError(f"input {name!r} has shape {dims!r}; this model takes {accepted}")
    if len(dims) == 3:
        dims = [dims[0], 1, *dims[1:]]
    if dims[1:] != [c, h, w]:
        raise InputError(f"input {name!r} has shape {tensor.get('shape')!r}; this model takes {accepted}")
    if not 1 <= dims[0] <= max_images:
        raise InputError(f"input {name!r} holds {dims[0]} images; send 1 to {max_images} per request (split the "
                         "batch)")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InputError(f"input {name!r} has no \"data\" list")
    if dtype == "UINT8":
        a = _integers(data, f"input {name!r}")
        if a.size and (a.min() < 0 or a.max() > 255):
            raise InputError(f"input {name!r} is UINT8 but has values from {a.min()} to {a.max()}; UINT8 pixels are "
                             "0..255")
        a = a.astype(np.float32) / 255.0
    else:
        try:
            a = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            a = None
        if a is None or a.dtype.kind not in "iuf":
            raise InputError(f"input {name!r} is FP32 but its data is not a rectangular array of numbers")
        a = a.astype(np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise InputError(f"input {name!r} is FP32 with values outside [0, 1] (or not finite); FP32 pixels are "
                             "value / 255: divide by 255, or send UINT8")
    if a.size != math.prod(dims):
        raise InputError(f"input {name!r} holds {a.size} values; its shape {tensor.get('shape')!r} needs "
                         f"{math.prod(dims)}")
    return np.ascontiguousarray(a.reshape(dims), dtype=np.float32)


__all__ = ["InputError", "decode_png", "encode_png", "parse_image", "parse_images", "parse_v2_images",
           "V2_DATATYPES"]
