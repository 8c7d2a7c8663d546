"""Degradations that a caption names: the prompt-information experiment of the benchmark and the demo.

Each low-resolution image is made with one of K known degradations (a Gaussian blur before MATLAB bicubic
down-sampling, :func:`pdnsr.data.degradations.blur_downsample`, optionally Gaussian noise on the LR image), and its
caption says which one, e.g. "a blurry photo". The caption then carries information the LR image hides: how much
to sharpen. A network that reads the prompt can use it; one that does not has to guess from the image. This
tests the whole prompt path (CLIP encoder -> prompt store -> dataset -> DCM mask and router -> loss) even with a
random-weight CLIP, whose embeddings of distinct captions are distinct but mean nothing.

The captions name the degradation, not the content. With real CLIP weights the same path carries content
captions ("a zebra on grass"), the paper's setting.

Used by ``benchmarks/bench_prompt_information.py`` and ``pdnsr/tools/demo.py`` (one home for the degradations, their
captions, the per-key assignment and the "wrong caption" rule).
"""

import os
import zlib
from dataclasses import dataclass

import numpy as np
from basicsr.data.transforms import mod_crop

from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import write_image

__all__ = [
    'Degradation',
    'DEGRADATION_SETS',
    'get_degradations',
    'assign_degradations',
    'swapped',
    'captions_of',
    'write_degraded_pairs',
]


@dataclass(frozen=True)
class Degradation:
    """One known degradation and the caption that names it.

    Attributes:
        name (str): short identifier used in keys and tables, e.g. 'sharp'.
        sigma (float): Gaussian blur sigma in HR pixels before bicubic down-sampling (> 0).
        noise (float): standard deviation of Gaussian noise added to the LR image, in 8-bit levels (0 = none).
        caption (str): the text prompt that names this degradation (and nothing about the content).
    """

    name: str
    sigma: float
    noise: float
    caption: str

    def describe(self):
        """'Gaussian blur sigma 0.4' (+ ', noise 10/255') for printed tables."""
        text = f'Gaussian blur sigma {self.sigma:g}'
        return text + (f', LR noise {self.noise:g}/255' if self.noise else '')

    def apply(self, hr, scale, key=''):
        """LR image of ``hr`` under this degradation.

        Args:
            hr (np.ndarray): (H, W, 3) uint8 HR image, H and W multiples of ``scale``.
            scale (int): down-sampling factor.
            key (str): the image's key; seeds the noise, so an image's LR is the same in every run.

        Returns:
            np.ndarray: (H / scale, W / scale, 3) uint8.
        """
        lr = blur_downsample(hr, scale, sigma=self.sigma)
        if self.noise:
            rng = np.random.default_rng(zlib.crc32(f'{key}|{self.name}'.encode()))
            lr = np.clip(np.rint(lr + rng.normal(0.0, self.noise, lr.shape)), 0, 255).astype(np.uint8)
        return lr


# Blur sets are ordered so that entry i and entry (i + K/2) mod K differ in the blur only (see `swapped`).
DEGRADATION_SETS = {
    'blur': (
        Degradation('sharp', 0.4, 0.0, 'a sharp photo'),
        Degradation('blurry', 2.0, 0.0, 'a blurry photo'),
    ),
    'blur-noise': (
        Degradation('sharp', 0.4, 0.0, 'a sharp photo'),
        Degradation('sharp-noisy', 0.4, 10.0, 'a sharp photo with grainy noise'),
        Degradation('blurry', 2.0, 0.0, 'a blurry photo'),
        Degradation('blurry-noisy', 2.0, 10.0, 'a blurry photo with grainy noise'),
    ),
}


def get_degradations(name):
    """The degradations of set ``name`` (a key of ``DEGRADATION_SETS``); a ValueError names the valid sets."""
    if name not in DEGRADATION_SETS:
        raise ValueError(f'unknown degradation set {name!r}; choose one of {sorted(DEGRADATION_SETS)}')
    return DEGRADATION_SETS[name]


def swapped(degradations, degradation):
    """The wrong caption's degradation for ``degradation``: entry ``(i + K // 2) mod K`` of ``degradations``.

    With the sets above that is the other blur at the same noise level (for K = 2 simply the other one).
    """
    index = degradations.index(degradation)
    return degradations[(index + len(degradations) // 2) % len(degradations)]


def assign_degradations(keys, degradations, seed=0):
    """A balanced, seeded choice of one degradation per key.

    The keys are shuffled with ``seed`` and dealt out in turn, so every degradation gets ``len(keys) / K`` keys
    (± 1), and neighbouring sub-images of one photo get independent choices.

    Returns:
        dict[str, Degradation]: key -> degradation, for every key of ``keys``.
    """
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    return {keys[j]: degradations[rank % len(degradations)] for rank, j in enumerate(order)}


def captions_of(assignment, wrong_from=None):
    """Captions for a prompt store: ``{key: [caption]}`` from ``{key: Degradation}``.

    ``wrong_from`` (the degradation set) gives each key the caption of :func:`swapped` instead: the store of
    wrong captions the benchmark and the demo evaluate with.
    """
    if wrong_from is None:
        return {key: [deg.caption] for key, deg in assignment.items()}
    return {key: [swapped(wrong_from, deg).caption] for key, deg in assignment.items()}


def write_degraded_pairs(items, scale, hr_dir, lr_dir):
    """Write, for each ``key: (hr, degradation)`` of ``items``, ``hr_dir/<key>.png`` (``hr``, an (H, W, 3) uint8 BGR
    image, mod-cropped to ``scale``) and its degraded ``lr_dir/<key>.png``; the two folders are made if missing.

    Each file is written atomically (:func:`pdnsr.data.image_files.write_image`), so an interrupted run never leaves
    a truncated image.
    """
    for folder in (hr_dir, lr_dir):
        os.makedirs(folder, exist_ok=True)
    for key, (hr, degradation) in items.items():
        hr = np.ascontiguousarray(mod_crop(hr, scale))
        write_image(os.path.join(hr_dir, f'{key}.png'), hr)
        write_image(os.path.join(lr_dir, f'{key}.png'), degradation.apply(hr, scale, key))
