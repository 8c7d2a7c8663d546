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
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim < 2 or any(n != 1 for n in mask.shape[:-2]):
        raise ValueError(f'attention mask must be (h, w) (with leading dimensions of 1), got shape {mask.shape}')
    mask = mask.reshape(mask.shape[-2:])  # not squeeze(): a 1-pixel-high mask stays 2-D
    gray = np.clip(np.rint(mask * 255), 0, 255).astype(np.uint8)
    if size is not None:
        gray = cv2.resize(gray, tuple(size), interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(gray, cv2.COLORMAP_JET)


def overlay_heatmap(image_bgr, mask, alpha=0.5):
    """The heat map of ``mask`` blended over ``image_bgr`` (uint8, (H, W, 3)), resized to the image."""
    heat = attention_heatmap(mask, size=(image_bgr.shape[1], image_bgr.shape[0]))
    return cv2.addWeighted(image_bgr, 1 - alpha, heat, alpha, 0)


# The colour bar beside every attention picture: JET from 0 (blue, bottom) to 1 (red, top), with three labels.
BAR_W, BAR_LABEL_W, BAR_MARGIN, BAR_MIN_H = 14, 30, 8, 96


def colour_bar(height):
    """A vertical colour bar of :func:`attention_heatmap`'s colours, 1 at the top and 0 at the bottom, labelled
    0, 0.5 and 1: (height, width, 3) uint8 BGR on white, ``height`` >= :data:`BAR_MIN_H`; wider, with larger
    labels, beside a tall picture."""
    height = max(int(height), BAR_MIN_H)
    k = max(1, min(3, height // 400))
    margin, width = BAR_MARGIN * k, BAR_W * k
    bar = np.full((height, margin + width + BAR_LABEL_W * k, 3), 255, np.uint8)
    top, bottom = margin, height - margin
    values = np.linspace(1, 0, bottom - top)[:, None].repeat(width, axis=1)
    bar[top:bottom, margin : margin + width] = attention_heatmap(values)
    for value in (1, 0.5, 0):
        y = int(round(top + (1 - value) * (bottom - top - 1))) + 4 * k
        cv2.putText(bar, f'{value:g}', (margin + width + 3 * k, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * k, (0, 0, 0), k,
                    cv2.LINE_AA)  # fmt: skip
    return bar


def with_colour_bar(picture):
    """``picture`` (uint8 BGR) with :func:`colour_bar` on its right; a picture lower than the bar sits at its top,
    on white."""
    bar = colour_bar(picture.shape[0])
    out = np.full((bar.shape[0], picture.shape[1] + bar.shape[1], 3), 255, np.uint8)
    out[: picture.shape[0], : picture.shape[1]] = picture
    out[:, picture.shape[1] :] = bar
    return out


def attention_overlay(image_bgr, mask, alpha=0.5):
    """What an attention PNG shows: :func:`overlay_heatmap` of ``mask`` over the image, with the colour bar."""
    return with_colour_bar(overlay_heatmap(image_bgr, mask, alpha))


# Picture grids: a white strip of LABEL_H pixels with the label above each panel, GAP white pixels between panels.
LABEL_H = 28
GAP = 4


def labelled_grid(rows):
    """One picture of labelled panels: ``rows`` is ``[[(label, image), ...], ...]``, uint8 BGR images, each row's
    panels of one height and every row of one width."""
    out = []
    for row in rows:
        panels = []
        for label, image in row:
            strip = np.full((LABEL_H, image.shape[1], 3), 255, np.uint8)
            cv2.putText(strip, label, (4, LABEL_H - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(np.concatenate([strip, image], axis=0))
        out.append(_join(panels, axis=1))
    return _join(out, axis=0)


def _join(pictures, axis):
    """``pictures`` side by side (axis 1) or stacked (axis 0), GAP white pixels apart."""
    shape = list(pictures[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, 255, np.uint8)
    return np.concatenate(
        [p for i, picture in enumerate(pictures) for p in ((gap, picture) if i else (picture,))], axis
    )


def grid_size(panel_h, panel_w, cols, rows=1):
    """(height, width) of :func:`labelled_grid` of ``rows`` x ``cols`` panels of ``panel_h`` x ``panel_w``."""
    return rows * (panel_h + LABEL_H) + (rows - 1) * GAP, cols * panel_w + (cols - 1) * GAP
