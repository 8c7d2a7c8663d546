"""Built-in sample data: the colour photos that ship inside scikit-image, with captions written for pdnsr.

scikit-image is a dependency of basicsr, so these exist on every install and need no download. The demo trains
on them and the tests build their small paired datasets from them.
"""

import os

import cv2
import numpy as np
from basicsr.data.transforms import mod_crop
from basicsr.utils.matlab_functions import imresize

# Captions describe what is in each photo, in the style of COCO captions.
SAMPLE_CAPTIONS = {
    'astronaut': [
        'a portrait of a smiling astronaut in a white spacesuit in front of an american flag',
        'an astronaut posing for an official photo with a space shuttle model',
    ],
    'coffee': [
        'a cup of coffee with latte art on a saucer with a spoon on a red table',
        'a white coffee cup seen from above on a wooden surface',
    ],
    'chelsea': [
        'a ginger tabby cat with striped fur looking to the side',
        'close up of an orange cat sitting on a rug',
    ],
    'rocket': [
        'a rocket standing on a launch pad next to a service tower under a blue sky',
        'a space launch vehicle on the pad before lift off',
    ],
    'hubble_deep_field': [
        'a deep field telescope image of many small colourful galaxies on black space',
        'hundreds of distant galaxies scattered across a dark sky',
    ],
    'immunohistochemistry': [
        'a microscope image of stained tissue with brown and blue cells',
        'a histology slide with many stained cell nuclei',
    ],
    'retina': [
        'a fundus photograph of a human retina with red blood vessels on an orange background',
        'a medical image of the back of an eye showing the optic disc and vessels',
    ],
    'motorcycle': [
        'a red and black motorcycle parked indoors among shelves and boxes',
        'a motorbike standing in a cluttered room',
    ],
}


def sample_photos():
    """{key: (H, W, 3) uint8 RGB} for every key of ``SAMPLE_CAPTIONS``, read from scikit-image's bundled files."""
    from skimage import data

    photos = {}
    for key in SAMPLE_CAPTIONS:
        img = data.stereo_motorcycle()[0] if key == 'motorcycle' else getattr(data, key)()
        photos[key] = np.ascontiguousarray(img[..., :3])
    return photos


def bicubic_resize(img, factor):
    """MATLAB-compatible bicubic resizing (basicsr's ``imresize``) of a uint8 image by ``factor`` (< 1: down),
    rounded back to uint8."""
    out = imresize(img.astype(np.float32) / 255.0, factor)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def centre_crop(img, size):
    """The central ``size`` x ``size`` window of ``img`` (H, W, ...); an edge shorter than ``size`` is kept whole."""
    top, left = (max(0, (side - size) // 2) for side in img.shape[:2])
    return img[top : top + size, left : left + size]


def write_pairs(photos, out_dir, scale, crop=None):
    """Write ``HR/<key>.png`` (mod-cropped to ``scale``; centre-cropped to ``crop`` pixels if given) and
    ``LRx<scale>/<key>.png`` for ``{key: RGB uint8}``. Returns ``(hr_dir, lr_dir)``."""
    hr_dir = os.path.join(out_dir, 'HR')
    lr_dir = os.path.join(out_dir, f'LRx{scale}')
    os.makedirs(hr_dir, exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    for key, img in photos.items():
        img = img if crop is None else centre_crop(img, crop)
        hr = np.ascontiguousarray(mod_crop(img, scale)[..., ::-1])  # RGB -> BGR for OpenCV
        cv2.imwrite(os.path.join(hr_dir, f'{key}.png'), hr)
        cv2.imwrite(os.path.join(lr_dir, f'{key}.png'), bicubic_resize(hr, 1 / scale))
    return hr_dir, lr_dir


def sample_dataset(root, encoder, scale=2, crop=96, count=6):
    """A small paired dataset with an image prompt store, for tests, benchmarks and the GPU check.

    ``count`` sample photos centre-cropped to ``crop`` pixels as ``HR`` / ``LRx<scale>`` PNGs under ``root``, and
    ``prompts_image.lmdb``: ``encoder``'s embeddings of the LR images (flipped view). Returns ``(hr, lr, store)``.
    """
    from pdnsr.prompts.build import build_prompt_store

    photos = dict(list(sample_photos().items())[:count])
    hr, lr = write_pairs(photos, str(root), scale=scale, crop=crop)
    store = os.path.join(str(root), 'prompts_image.lmdb')
    build_prompt_store('image', store, encoder, images_dir=lr, progress=False)
    return hr, lr, store
