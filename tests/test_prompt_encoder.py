"""PromptEncoder with the real open_clip ViT-B-32 architecture and RANDOM weights (``pretrained=None``).

Pretrained weights cannot be downloaded on the CI machine, so the embeddings are meaningless here: the tests check
shapes, normalisation, batching, views, the mixed rule and error handling, not semantics.
"""

import copy
import logging
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pdnsr.prompts.encoder import PromptEncoder


@pytest.fixture(scope='module')
def encoder(clip_encoder):
    """The session's random-weight encoder (seeded, so the same weights) with batches of 4."""
    encoder = copy.copy(clip_encoder)
    encoder.batch_size = 4
    return encoder


def test_random_weights_are_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        PromptEncoder('ViT-B-32', pretrained=None)
    assert [r.levelno for r in caplog.records if 'meaningless' in r.getMessage()] == [logging.WARNING]


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24 + 4 * i, 32, 3), dtype=np.uint8) for i in range(5)]


def _assert_unit_rows(x, n, d=512):
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.device.type == 'cpu'
    assert x.shape == (n, d)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)


def test_attributes_and_metadata(encoder):
    assert encoder.embed_dim == 512
    assert encoder.model_name == 'ViT-B-32' and encoder.pretrained == 'none'
    meta = encoder.metadata()
    assert meta['model_name'] == 'ViT-B-32' and meta['pretrained'] == 'none' and meta['random_init_seed'] == 0


def test_encode_text_is_batched_normalised_and_batch_independent(encoder):
    texts = ['a zebra grazing on green grass', 'a red car', 'two cats on a sofa', 'snowy mountains', 'a lighthouse']
    together = encoder.encode_text(texts)  # batches of 4 + 1
    _assert_unit_rows(together, 5)
    one_by_one = torch.cat([encoder.encode_text([t]) for t in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
    assert not torch.allclose(together[0], together[1])
    assert encoder.encode_text([]).shape == (0, 512)


def test_long_caption_is_truncated_with_a_warning_naming_its_key(encoder, caplog):
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        out = encoder.encode_text(['short', 'word ' * 120], keys=['short_one', 'long_one'])
    assert re.search(r"'long_one'.*truncated to the context length 77", caplog.text), caplog.text
    _assert_unit_rows(out, 2)


@pytest.mark.slow
def test_encode_images_views(encoder, images):
    flipped = encoder.encode_images(images, view='flip')
    _assert_unit_rows(flipped, len(images))
    mirrored = encoder.encode_images([im[:, ::-1].copy() for im in images], view='identity')
    torch.testing.assert_close(flipped, mirrored, atol=1e-5, rtol=0)
    identity = encoder.encode_images(images, view='identity')
    assert not torch.allclose(flipped, identity, atol=1e-4)


def test_encode_images_rejects_bad_input(encoder, images):
    with pytest.raises(ValueError, match=r'image 1 must be an HxWx3 uint8 RGB array'):
        encoder.encode_images([images[0], images[1].astype(np.float32)])
    with pytest.raises(ValueError, match='view'):
        encoder.encode_images(images, view='hr')


@pytest.mark.slow
def test_encode_mixed_is_normalised_sum_per_caption(encoder, images):
    texts = [['a bird', 'a toucan on a branch'], ['a baby'], ['x', 'y', 'z']]
    mixed = encoder.encode_mixed(texts, images[:3], view='flip')
    assert [m.shape for m in mixed] == [(2, 512), (1, 512), (3, 512)]
    t = encoder.encode_text(texts[2])
    v = encoder.encode_images(images[2:3], view='flip')
    torch.testing.assert_close(mixed[2], F.normalize(t + v, dim=-1), atol=1e-5, rtol=0)
    for m in mixed:
        _assert_unit_rows(m, m.shape[0])


def test_tag_that_cannot_be_downloaded_fails_fast_and_clearly(monkeypatch):
    # Port 9 (discard) on localhost refuses at once: a "network" that cannot serve the file, on any machine.
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r'--clip-pretrained /path/to/open_clip_model\.bin') as err:
        PromptEncoder('ViT-B-32', pretrained='commonpool_s_s13m_b4k')
    assert time.monotonic() - start < 30
    assert "'ViT-B-32'" in str(err.value) and "'commonpool_s_s13m_b4k'" in str(err.value)
    assert err.value.__cause__ is not None


@pytest.mark.parametrize('pretrained, reason', [('no_such_tag', 'known tag'), ('/nonexistent/clip.bin', 'not exist')])
def test_unknown_tag_or_missing_file(pretrained, reason):
    with pytest.raises(RuntimeError, match=reason) as err:
        PromptEncoder('ViT-B-32', pretrained=pretrained)
    assert '--clip-pretrained' in str(err.value)
