"""The paper's degradation: isotropic Gaussian blur followed by MATLAB-compatible bicubic down-sampling.

PDN (paper §4.1) makes its low-resolution inputs by blurring the high-resolution image with a Gaussian of
sigma = 1.3 and then down-sampling with bicubic interpolation. The bicubic step is basicsr's
``basicsr.utils.matlab_functions.imresize`` (the same as MATLAB's ``imresize``, anti-aliasing on), which is the
standard way the SR benchmarks are made; with ``sigma=0`` (or ``None``) the function is exactly that plain bicubic.

Conventions fixed here (the paper does not state them):

* Kernel: ``g(x, y) ∝ exp(-(x² + y²) / (2 sigma²))`` sampled at integer offsets ``-r..r`` with ``r = ceil(3 sigma)``
  (size ``2 r + 1``: 9×9 for sigma = 1.3), normalised to sum 1. It is separable, so it is applied as two 1-D passes.
* Border: symmetric reflection including the edge pixel (``cba|abc``, MATLAB's ``'symmetric'``, OpenCV's
  ``BORDER_REFLECT``), the same padding basicsr's ``imresize`` uses, so the whole pipeline pads one way.
* Precision: the blur runs in float64; ``imresize`` then computes in float32 as basicsr does.
* Sizes: the image height and width must be multiples of ``scale`` so that HR and LR pair exactly; crop them
  first with ``basicsr.data.transforms.mod_crop`` (not re-implemented here).
"""

import math

import cv2
import numpy as np
from basicsr.utils.matlab_functions import imresize

__all__ = ['gaussian_kernel1d', 'gaussian_blur', 'blur_downsample']


def gaussian_kernel1d(sigma, radius=None):
    """1-D normalised Gaussian kernel, float64.

    Args:
        sigma (float): Standard deviation in pixels, > 0.
        radius (int | None): Half size; the kernel has ``2 * radius + 1`` taps. Default ``ceil(3 * sigma)``.

    Returns:
        ndarray: (2 * radius + 1,) weights summing to 1.
    """
    if sigma is None or sigma <= 0:
        raise ValueError(f'sigma must be > 0 for a Gaussian kernel, got {sigma}')
    if radius is None:
        radius = int(math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(img, sigma):
    """Isotropic Gaussian blur with the module's kernel size and symmetric border.

    Args:
        img (ndarray): (H, W) or (H, W, C), any real dtype; computed in float64.
        sigma (float): Standard deviation in pixels, > 0.

    Returns:
        ndarray: float64 array of the same shape.
    """
    kernel = gaussian_kernel1d(sigma)
    img64 = np.ascontiguousarray(img, dtype=np.float64)
    # cv2 handles up to 4 channels per call; split wider images so any C works.
    if img64.ndim == 3 and img64.shape[2] > 4:
        return np.stack([gaussian_blur(img64[..., c], sigma) for c in range(img64.shape[2])], axis=2)
    out = cv2.sepFilter2D(img64, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    if img64.ndim == 3 and out.ndim == 2:  # cv2 drops a singleton channel axis
        out = out[:, :, None]
    return out


def blur_downsample(img, scale, sigma=1.3):
    """Blur with a Gaussian of ``sigma``, then MATLAB bicubic down-sampling by ``scale``.

    Args:
        img (ndarray): HR image (H, W) or (H, W, C), either uint8 in [0, 255] or float32/float64 in [0, 1].
            H and W must be multiples of ``scale`` (use ``basicsr.data.transforms.mod_crop``).
        scale (int): Down-sampling factor, a positive integer.
        sigma (float | None): Blur standard deviation in HR pixels. ``0`` or ``None`` skips the blur (plain
            bicubic, the classic benchmark degradation).

    Returns:
        ndarray: LR image (H / scale, W / scale[, C]) with the input's dtype. uint8 in gives uint8 out, rounded
        to nearest and clipped; float in gives float out of the same dtype, clipped to [0, 1] (bicubic
        overshoots slightly), so ``uint8 out == round(float out * 255)`` for the same image.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f'scale must be a positive integer, got {scale!r}')
    if sigma is not None and sigma < 0:
        raise ValueError(f'sigma must be >= 0 (0 or None: no blur), got {sigma}')
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError('img must be a numpy array of shape (H, W) or (H, W, C)')
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(
            f'image size {h}x{w} is not a multiple of scale {scale}: '
            'crop it first with basicsr.data.transforms.mod_crop(img, scale)'
        )

    if img.dtype == np.uint8:
        x = img.astype(np.float64) / 255.0
    elif np.issubdtype(img.dtype, np.floating):
        x = img.astype(np.float64)
    else:
        raise ValueError(f'img dtype must be uint8 or float in [0, 1], got {img.dtype}')

    if sigma:
        x = gaussian_blur(x, sigma)
    if scale > 1:
        x = imresize(x.astype(np.float32), 1 / scale)
    expected = (h // scale, w // scale)
    if x.shape[:2] != expected:  # guards against a float rounding surprise in imresize's ceil(size * 1 / scale)
        raise RuntimeError(f'imresize gave {x.shape[:2]}, expected {expected}')
    x = np.clip(x, 0.0, 1.0)

    if img.dtype == np.uint8:
        return np.round(x * 255.0).astype(np.uint8)
    return x.astype(img.dtype)
