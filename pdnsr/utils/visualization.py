"""Attention masks as pictures: colour heat maps, optionally over the image they belong to."""

import cv2
import numpy as np


def attention_heatmap(mask, size=None):
    """Colour heat map (BGR uint8, JET) of one attention mask.

    Args:
        mask: (h, w) array or tensor with values in [0, 1]. The colours are absolute (0 = blue, 1 = red), not
            stretched per image, so masks of different prompts can be compared side by side.
        size: (width, height) to resize to (nearest neighbour: one LR pixel stays one block), or None.
    """
    if hasattr(mask, 'detach'):
        mask = mask.detach().float().cpu().numpy()
    mask = np.asarray(mask, dtype=np.float32).squeeze()
    if mask.ndim != 2:
        raise ValueError(f'attention mask must be (h, w) after squeezing, got shape {mask.shape}')
    gray = np.clip(np.rint(mask * 255), 0, 255).astype(np.uint8)
    if size is not None:
        gray = cv2.resize(gray, tuple(size), interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(gray, cv2.COLORMAP_JET)


def overlay_heatmap(image_bgr, mask, alpha=0.5):
    """The heat map of ``mask`` blended over ``image_bgr`` (uint8, (H, W, 3)), resized to the image."""
    heat = attention_heatmap(mask, size=(image_bgr.shape[1], image_bgr.shape[0]))
    return cv2.addWeighted(image_bgr, 1 - alpha, heat, alpha, 0)
