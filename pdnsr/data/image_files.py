"""Image files: which names are images, their keys (basicsr's rule), listing a folder, reading, atomic writing.

The one home of these rules for the prompt-store builder, the dataset, inference and the data preparation commands.

Reading checks that a file is complete. cv2 decodes a JPEG that was cut short without an error: libjpeg's "Premature
end of JPEG file" goes to stderr and the missing rows come back flat grey. So every JPEG and PNG is first checked to
reach its end marker (a walk over its segments / chunks, no decoding); the other formats fail to decode when cut.
"""

import os

import cv2
import numpy as np
from PIL import Image

from pdnsr.errors import UserError, one_line
from pdnsr.utils.files import written_atomically

# Matched case-insensitively: `photo.JPG` is an image too.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def image_key(path):
    """basicsr's key of an image file: its name without folder and extension (``a/b/0001.png`` -> ``0001``)."""
    return os.path.splitext(os.path.basename(path))[0]


def is_image_name(name):
    """True for a visible file name with an image suffix (hidden and temporary files are not images)."""
    return not name.startswith('.') and name.lower().endswith(IMAGE_SUFFIXES)


def scan_images(folder):
    """The image files directly inside ``folder`` (not recursive, like basicsr's paired folder dataset).

    Returns:
        dict[str, str]: key -> file path, sorted by key (empty when the folder holds no image).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: two files share a key (``a.png``, ``a.jpg``): they would collide in the stores and outputs.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'image folder {folder} does not exist')
    found = {}
    for name in sorted(os.listdir(folder)):
        if is_image_name(name) and os.path.isfile(os.path.join(folder, name)):
            key = image_key(name)
            if key in found:
                raise ValueError(
                    f'image folder {folder}: {found[key]} and {name} have the same key {key!r} (file name without '
                    'extension); rename one'
                )
            found[key] = name
    return {key: os.path.join(folder, found[key]) for key in sorted(found)}


class UnreadableImage(UserError, ValueError):
    """An image file that cannot be used as it is: missing, unreadable, empty, truncated, not decodable, or (for the
    data preparation, :func:`read_bgr`) not 8-bit. The message names the file; the data preparation skips such files
    (``--strict`` stops instead)."""


_JPEG_SOI = b'\xff\xd8'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _jpeg_reaches_end(data):
    """True when the JPEG ``data`` (bytes) reaches its end-of-image marker.

    Walks the segments by their lengths, so a thumbnail inside an APP segment (with its own end marker) is skipped,
    and bytes after the end marker (some cameras append data) are never looked at. Inside entropy-coded data a 0xFF
    byte is followed by 0x00 (stuffing) or a restart marker, so the next other 0xFF xx is the next marker.
    """
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return False  # lost the marker sequence: corrupt
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > end:
            return False
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], 'big')
        if marker == 0xDA:  # start of scan: skip its entropy-coded data
            while True:
                pos = data.find(b'\xff', pos)
                if pos < 0 or pos + 1 >= end:
                    return False
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return False


def _png_reaches_end(data):
    """True when the PNG ``data`` (bytes) holds every chunk up to IEND (length + type + data + CRC each)."""
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = int.from_bytes(data[pos : pos + 4], 'big'), data[pos + 4 : pos + 8]
        if kind == b'IEND':
            return True
        pos += 12 + length
    return False


def decode_image(path, flags=cv2.IMREAD_UNCHANGED):
    """Read an image file once and decode it with cv2, refusing a file that is cut short.

    Args:
        path (str | os.PathLike): the file.
        flags (int): cv2 imread flags, e.g. ``cv2.IMREAD_UNCHANGED`` (as stored) or ``cv2.IMREAD_COLOR``.

    Returns:
        np.ndarray: what ``cv2.imdecode`` gives: (H, W) or (H, W, C) BGR(A), dtype as stored (or as ``flags`` ask).

    Raises:
        UnreadableImage: missing, unreadable, empty, truncated, or not decodable (unsupported or corrupt).
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise UnreadableImage(f'cannot read image {path}: {err.strerror or err}') from None
    if not data:
        raise UnreadableImage(f'image {path} is empty (0 bytes)')
    if data.startswith(_JPEG_SOI) and not _jpeg_reaches_end(data):
        raise UnreadableImage(f'image {path} is truncated or corrupt (its JPEG data stops before the end marker)')
    if data.startswith(_PNG_SIGNATURE) and not _png_reaches_end(data):
        raise UnreadableImage(f'image {path} is truncated (its PNG data stops before the IEND chunk)')
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise UnreadableImage(f'cannot decode image {path} (unsupported format, or a corrupt or truncated file)')
    return img


def read_rgb(path):
    """(H, W, 3) uint8 RGB of an image file (cv2; grey becomes 3 channels, alpha is dropped, 16-bit is scaled, the
    EXIF orientation is applied).

    Raises:
        UnreadableImage: (a ValueError) see :func:`decode_image`.
    """
    return cv2.cvtColor(decode_image(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_bgr(path):
    """An 8-bit image file as stored, as 3 channels: what the data preparation crops and degrades.

    Greyscale is replicated to 3 channels and alpha is dropped, so every prepared folder holds 3-channel images (what
    the networks and CLIP expect); the EXIF orientation is not applied (the pixels as stored).

    Returns:
        tuple[np.ndarray, bool]: the (H, W, 3) uint8 BGR image and whether it was greyscale in the file.

    Raises:
        UnreadableImage: see :func:`decode_image`; also a file of more than 8 bits per channel (a 16-bit PNG or
            TIFF): the degradation and the PNG outputs are 8-bit, and scaling it down here would hide a choice
            (how to map its range) the user should make.
    """
    img = decode_image(path, cv2.IMREAD_UNCHANGED)
    if img.dtype != np.uint8:
        raise UnreadableImage(
            f'image {path}: only 8-bit images are supported, got {img.dtype} ({img.dtype.itemsize * 8} bits per '
            'channel); convert it to 8 bits'
        )
    grey = img.ndim == 2 or img.shape[2] == 1
    if grey:
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img, grey


def image_size(path):
    """(height, width) of an image file from its header, without decoding it (Pillow opens files lazily); None
    when Pillow cannot read the header. The EXIF orientation is not applied, as in :func:`read_bgr`.

    Raises:
        ValueError: the header claims more pixels than Pillow's decompression-bomb bound (a file that is never read).
    """
    try:
        with Image.open(os.fspath(path)) as img:
            return img.height, img.width
    except Image.DecompressionBombError as err:  # over twice Image.MAX_IMAGE_PIXELS
        raise ValueError(f'{path}: {one_line(err).rstrip(".")}: not read') from None
    except (OSError, ValueError, SyntaxError):  # Pillow raises these three for files it cannot identify or parse
        return None


def write_image(path, img, params=None):
    """Encode ``img`` (cv2 layout: BGR uint8) by the suffix of ``path`` and move it into place atomically.

    The temporary file lives in the same folder (``os.replace`` is atomic within one file system only) and is
    opened like any other file, so the result gets the permissions the user's umask gives.
    """
    path = os.fspath(path)
    ok, data = cv2.imencode(os.path.splitext(path)[1], img, params or [])
    if not ok:
        raise ValueError(f'cannot encode {path} (unsupported suffix or image)')
    with written_atomically(path) as tmp, open(tmp, 'wb') as f:
        f.write(data.tobytes())
