"""Image files: which names are images, their keys (basicsr's rule), listing a folder, reading, atomic writing.

The one home of these rules for the prompt-store builder, the dataset, inference and the data preparation scripts.
"""

import os

import cv2

# Matched case-insensitively: `photo.JPG` is an image too.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# Temporary files start with a dot, so listings skip them and an interrupted write leaves nothing under a final name.
TMP_PREFIX = '.tmp-'


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


def read_rgb(path):
    """(H, W, 3) uint8 RGB of an image file (cv2; grey becomes 3 channels, alpha is dropped, 16-bit is scaled).

    Raises:
        ValueError: the file cannot be decoded (missing, unsupported or corrupt).
    """
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, unsupported or corrupt)')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path, img, params=None):
    """Encode ``img`` (cv2 layout: BGR uint8) by the suffix of ``path`` and move it into place atomically.

    The temporary file lives in the same folder (``os.replace`` is atomic within one file system only) and is
    opened like any other file, so the result gets the permissions the user's umask gives.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    ok, data = cv2.imencode(os.path.splitext(name)[1], img, params or [])
    if not ok:
        raise ValueError(f'cannot encode {path} (unsupported suffix or image)')
    tmp = os.path.join(folder, f'{TMP_PREFIX}{name}.{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            f.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
