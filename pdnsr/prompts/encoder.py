"""open_clip wrapper that turns captions and images into prompt embeddings.

All outputs are float32 CPU tensors with L2-normalised rows, the form the prompt store keeps and the DCM consumes.
Warnings (random weights, truncated captions) go to basicsr's logger, once. Loading weights never hangs on a machine
without internet: a hub tag that is not in the local cache is only downloaded after a quick reachability check, and
any failure becomes one ``RuntimeError`` telling the user to pass a local checkpoint file.
"""

import functools
import os
import urllib.error
import urllib.request

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger
from PIL import Image

from pdnsr.errors import UserError
from pdnsr.provenance import file_sha256

RANDOM_TAGS = (None, '', 'none', 'None')
VIEWS = ('flip', 'identity')
_REACH_TIMEOUT_S = 8
CHECKPOINT_SUFFIXES = ('.bin', '.pt', '.pth', '.safetensors', '.ckpt')


def names_a_file(pretrained):
    """True when a ``pretrained`` value is meant as a checkpoint file (a path, or a checkpoint suffix), not a tag."""
    return os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)


class WeightsUnavailable(UserError, RuntimeError):
    """The CLIP weights cannot be loaded: a RuntimeError that the command lines report as a user error (exit 2)."""


def _preprocess_overrides(tag_cfg):
    """The model settings a pretrained tag implies, passed explicitly so that a cached file and a fresh download
    build the same model. open_clip only warns when a tag trained with QuickGELU (OpenAI's) is loaded into a GELU
    config; we switch QuickGELU on, since the weights are only right with it."""
    kwargs = {'force_quick_gelu': bool(tag_cfg.get('quick_gelu', False))}
    for src, dst in (
        ('mean', 'image_mean'),
        ('std', 'image_std'),
        ('interpolation', 'image_interpolation'),
        ('resize_mode', 'image_resize_mode'),
    ):
        if tag_cfg.get(src) is not None:
            kwargs[dst] = tag_cfg[src]
    return kwargs


def _cached_checkpoint(tag_cfg, cache_dir=None):
    """Local file of a pretrained tag if it was downloaded before, else None (no network access)."""
    if tag_cfg.get('file') and os.path.isfile(tag_cfg['file']):
        return tag_cfg['file']
    hf_hub = tag_cfg.get('hf_hub', '')
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, filename = os.path.split(hf_hub)
            filename = filename or open_clip.pretrained.HF_WEIGHTS_NAME
            # open_clip prefers a safetensors sibling of the file the tag names; look for both.
            candidates = [filename]
            if filename == open_clip.pretrained.HF_WEIGHTS_NAME:
                candidates.insert(0, 'open_clip_model.safetensors')
            elif filename.endswith(('.bin', '.pth')):
                candidates.insert(0, filename[:-4] + '.safetensors')
            for name in candidates:
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = tag_cfg.get('url', '')
    if url:
        target = os.path.join(cache_dir or os.path.expanduser('~/.cache/clip'), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _probe_download_host(tag_cfg):
    """Check within a few seconds that the tag's download host answers.

    huggingface_hub retries a failing connection with back-off for about 45 s per file, and open_clip tries two
    files; probing the host once with a short timeout turns "no network" into an error in seconds.

    Returns:
        tuple[str, BaseException | None] | None: (why it cannot be reached, the original error), or None if it can.
    """
    if tag_cfg.get('hf_hub'):
        if os.environ.get('HF_HUB_OFFLINE', '0').lower() in ('1', 'true', 'yes', 'on'):
            return 'HF_HUB_OFFLINE is set', None
        url = os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/') + '/'
    else:
        url = tag_cfg.get('url', '')
    if not url:
        return 'the tag has no download location', None
    try:
        # urllib honours the *_proxy environment variables, like the downloaders do.
        with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=_REACH_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # the host answered: downloading may work
    except (urllib.error.URLError, OSError, ValueError) as err:
        return f'{url} is not reachable ({getattr(err, "reason", err)})', err


@functools.lru_cache(maxsize=4)
def tokenizer_of(model_name):
    """``(tokenizer, context_length)`` of open_clip's ``model_name``, built once: the vocabulary only, no weights.
    ``context_length``: the tokens its text encoder reads, start and end included (77 for CLIP)."""
    tokenizer = open_clip.get_tokenizer(model_name)
    return tokenizer, int(getattr(tokenizer, 'context_length', None) or 77)


def check_prompt_length(text, model_name=None, flag='--prompt'):
    """Refuse a prompt longer than the text context of open_clip's ``model_name`` (:func:`tokenizer_of`; None:
    ViT-B-32, whose tokenizer and 77 tokens every open_clip CLIP model shares): CLIP would silently encode only its
    beginning. Builds only the tokenizer, so a command checks before it loads anything (``pdnsr-export``).

    Captions files keep :meth:`PromptEncoder.encode_text`'s rule (truncated, with a warning naming the key): one long
    caption among thousands should not stop a store build; a prompt typed for one run should say what it will be.

    Raises:
        UserError: naming ``flag``, the prompt's token count and the limit.
    """
    model_name = model_name or 'ViT-B-32'
    tokenizer, limit = tokenizer_of(model_name)
    # Byte-level BPE: at most one token per UTF-8 byte (twice that allows for the tokenizer's cleaning), plus the
    # start and end tokens; padding is 0.
    tokens = tokenizer([text], context_length=2 * len(text.encode('utf-8')) + 2)
    count = int((tokens[0] != 0).sum())
    if count > limit:
        raise UserError(
            f'{flag} has {count} tokens ({len(text)} characters) but the text encoder of CLIP {model_name} reads at '
            f'most {limit} tokens, start and end included; shorten it (CLIP would use only its beginning)'
        )


class PromptEncoder:
    """CLIP (open_clip) text and image encoder for prompts.

    Args:
        model_name (str): open_clip architecture, e.g. 'ViT-B-32' (d = 512).
        pretrained (str | None): open_clip pretrained tag ('openai', 'laion2b_s34b_b79k', ...), a local checkpoint
            file, or None / 'none' for random weights (seeded with ``seed``; for tests only: the embeddings carry no
            meaning).
        device (str | torch.device): where the model runs; outputs are always on the CPU.
        batch_size (int): items per forward pass.
        seed (int): seed of the random initialisation when ``pretrained`` is None, so that random-weight stores are
            reproducible across processes (and resumable).

    Raises:
        WeightsUnavailable: (a RuntimeError) the pretrained weights cannot be loaded; the message says how to pass a
            local file.
    """

    def __init__(self, model_name='ViT-B-32', pretrained='openai', device='cpu', batch_size=32, seed=0):
        self.model_name = model_name
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.random_weights = pretrained in RANDOM_TAGS
        self.pretrained = 'none' if self.random_weights else os.fspath(pretrained)
        self.seed = int(seed) if self.random_weights else None
        self._quick_gelu = False
        logger = get_root_logger()

        if self.random_weights:
            msg = (
                f'PromptEncoder: open_clip {model_name} with RANDOM weights (pretrained={pretrained!r}); the '
                'embeddings are meaningless. Use it for tests only, never for training or evaluating a model.'
            )
            logger.warning(msg)
            # Seed in a forked RNG so the weights are reproducible without disturbing the caller's RNG state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
        else:
            source, kwargs = self._resolve(model_name, self.pretrained)
            self._quick_gelu = kwargs.get('force_quick_gelu', False)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=source, **kwargs)
            except Exception as err:
                raise self._load_error(str(err)) from err

        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer, self.context_length = tokenizer_of(model_name)
        with torch.no_grad():
            probe = self.tokenizer(['a'])
            self.embed_dim = int(self.model.encode_text(probe.to(self.device)).shape[-1])

    # ------------------------------------------------------------------ weights
    def _load_error(self, reason):
        return WeightsUnavailable(
            f'Cannot load pretrained weights {self.pretrained!r} for open_clip model {self.model_name!r}: {reason}. '
            f'Download the checkpoint on a machine with internet access (open_clip.create_model_and_transforms('
            f'{self.model_name!r}, pretrained={self.pretrained!r}) caches it under ~/.cache/huggingface or '
            f'~/.cache/clip) and pass the local file with --clip-pretrained /path/to/open_clip_model.bin '
            f'(PromptEncoder(pretrained=path) in Python).'
        )

    def _resolve(self, model_name, pretrained):
        """(value for open_clip's ``pretrained``, extra keyword arguments), failing fast when it cannot work."""
        if os.path.isfile(pretrained):
            return pretrained, {}
        if names_a_file(pretrained):
            raise self._load_error(f'checkpoint file {pretrained} does not exist')
        if model_name.startswith(('hf-hub:', 'local-dir:')):
            return None, {}  # open_clip ignores `pretrained` for these; the schema names the weights
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            known = open_clip.list_pretrained_tags_by_model(model_name)
            raise self._load_error(f'{pretrained!r} is neither a file nor a known tag (known tags: {known})')
        kwargs = _preprocess_overrides(tag_cfg)
        cached = _cached_checkpoint(tag_cfg)
        if cached is not None:
            return cached, kwargs
        failure = _probe_download_host(tag_cfg)
        if failure is not None:
            reason, err = failure
            raise self._load_error(f'the weights are not cached locally and {reason}') from err
        return pretrained, kwargs

    def metadata(self):
        """dict: how embeddings were made, saved in the prompt store."""
        meta = {
            'encoder': 'open_clip',
            'model_name': self.model_name,
            'pretrained': self.pretrained,
            'open_clip_version': open_clip.__version__,
            'quick_gelu': self._quick_gelu,
        }
        if self.random_weights:
            meta['random_init_seed'] = self.seed
        elif os.path.isfile(self.pretrained):
            # A file is identified by its content: the same checkpoint under another path is the same encoder.
            meta['weights_sha256'] = file_sha256(self.pretrained)
        return meta

    # ------------------------------------------------------------------ encoding
    def _normalise(self, feats):
        return F.normalize(feats.float(), dim=-1).cpu()

    def _empty(self):
        return torch.zeros(0, self.embed_dim, dtype=torch.float32)

    def encode_text(self, texts, keys=None, batch_size=None):
        """Encode captions.

        Text longer than the tokenizer's context length (77 tokens for CLIP) is truncated, with a warning that
        names the key.

        Args:
            texts (list[str]): N captions.
            keys (list[str] | None): a name per caption for warnings (e.g. its image key); default the index.
            batch_size (int | None): captions per forward pass; default ``self.batch_size``.

        Returns:
            torch.Tensor: (N, d) float32 on the CPU, rows of unit L2 norm.
        """
        texts = list(texts)
        if keys is not None and len(keys) != len(texts):
            raise ValueError(f'encode_text: {len(texts)} texts but {len(keys)} keys.')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f'encode_text: caption of {keys[i] if keys else i!r} is {type(text).__name__}, not str.'
                )
        if not texts:
            return self._empty()
        batch_size = batch_size or self.batch_size
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                tokens = self.tokenizer(chunk)
                self._warn_truncated(chunk, tokens, keys, start)
                out.append(self._normalise(self.model.encode_text(tokens.to(self.device))))
        return torch.cat(out)

    def _warn_truncated(self, chunk, tokens, keys, start):
        # Only a caption that fills the last token slot can have been cut; re-tokenise just those without the limit.
        for j in torch.nonzero(tokens[:, -1] != 0).flatten().tolist():
            full = self.tokenizer([chunk[j]], context_length=self.context_length * 8)
            n_tokens = int((full[0] != 0).sum())
            if n_tokens > self.context_length:
                name = keys[start + j] if keys is not None else start + j
                msg = (
                    f'Caption of {name!r} has {n_tokens} tokens; truncated to the context length '
                    f'{self.context_length}: {chunk[j][:60]!r}...'
                )
                get_root_logger().warning(msg)

    def _to_pil(self, image, view, index):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f'{image.dtype} {image.shape}' if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f'encode_images: image {index} must be an HxWx3 uint8 RGB array, got {desc}.')
        if view == 'flip':
            image = image[:, ::-1]
        return Image.fromarray(np.ascontiguousarray(image))

    def encode_images(self, images, view='flip', batch_size=None):
        """Encode images.

        Args:
            images (list[np.ndarray]): N arrays of shape (H, W, 3), uint8, RGB.
            view (str): 'flip' encodes the horizontally flipped image (the paper's default), 'identity' as is.
            batch_size (int | None): images per forward pass; default ``self.batch_size``.

        Returns:
            torch.Tensor: (N, d) float32 on the CPU, rows of unit L2 norm.
        """
        if view not in VIEWS:
            raise ValueError(f'encode_images: view must be one of {VIEWS}, got {view!r}.')
        images = list(images)
        if not images:
            return self._empty()
        batch_size = batch_size or self.batch_size
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                pixels = torch.stack([self.preprocess(self._to_pil(im, view, start + i)) for i, im in enumerate(chunk)])
                out.append(self._normalise(self.model.encode_image(pixels.to(self.device))))
        return torch.cat(out)

    def encode_mixed(self, texts_per_image, images, view='flip', keys=None, batch_size=None):
        """Combine each caption with its image: ``normalize(normalize(t) + normalize(v))``, one row per caption.

        Adding the two unit vectors and renormalising gives their bisector on the unit sphere: a prompt that is
        equally close (in cosine) to what the caption says and to what the image shows.

        Args:
            texts_per_image (list[list[str]]): captions of each of the N images (m_i of them).
            images (list[np.ndarray]): N arrays (H, W, 3) uint8 RGB.
            view (str): image view, see :meth:`encode_images`.
            keys (list[str] | None): image keys, for truncation warnings.
            batch_size (int | None): items per forward pass.

        Returns:
            list[torch.Tensor]: N tensors of shape (m_i, d), float32 CPU, unit rows.
        """
        if len(texts_per_image) != len(images):
            raise ValueError(f'encode_mixed: {len(texts_per_image)} caption lists but {len(images)} images.')
        image_emb = self.encode_images(images, view=view, batch_size=batch_size)
        flat = [t for texts in texts_per_image for t in texts]
        flat_keys = None
        if keys is not None:
            flat_keys = [k for k, texts in zip(keys, texts_per_image) for _ in texts]
        text_emb = self.encode_text(flat, keys=flat_keys, batch_size=batch_size)
        out, pos = [], 0
        for i, texts in enumerate(texts_per_image):
            rows = text_emb[pos : pos + len(texts)]
            pos += len(texts)
            out.append(F.normalize(rows + image_emb[i : i + 1], dim=-1))
        return out

    def __repr__(self):
        return f'PromptEncoder({self.model_name!r}, pretrained={self.pretrained!r}, d={self.embed_dim})'
