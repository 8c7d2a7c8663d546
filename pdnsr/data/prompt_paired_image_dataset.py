"""basicsr's PairedImageDataset plus one prompt embedding per sample, read from a prompt store."""

import copy

import numpy as np
import torch
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.registry import DATASET_REGISTRY

from pdnsr.data.image_files import image_key
from pdnsr.data.prompt_store import DEFAULT_SUBIMAGE_PATTERN, PromptStore, parent_key

PROMPT_CHOICES = ('random', 'first', 'mean')


@DATASET_REGISTRY.register()
class PromptPairedImageDataset(PairedImageDataset):
    """Paired LQ/GT images with a CLIP prompt embedding per image.

    Takes every option of basicsr's ``PairedImageDataset`` (folder, meta_info_file or lmdb backend) plus:

    - ``dataroot_prompt`` (str, required): prompt store built by ``scripts/make_prompt_lmdb.py``.
    - ``prompt_dim`` (int, optional): expected embedding size; a store with another d is refused.
    - ``prompt_key_pattern`` (str | null): regex with a ``parent`` group mapping a sub-image key to the key of the
      image it was cropped from; default ``^(?P<parent>.+)_s\\d+$`` (basicsr's ``<name>_s001`` crops); null
      disables it. A key found in the store as it is always wins over its parent.
    - ``prompt_choice``: which of the m stored prompts of an image to return: ``random`` (one per sample, the
      default in phase ``train``), ``first`` (default otherwise) or ``mean`` (normalised mean of all m).

    Each sample is basicsr's dict ``{lq, gt, lq_path, gt_path}`` plus ``prompt``: float32 tensor (d,) and
    ``prompt_key``: the store key it came from. The option dict is copied, never modified.

    Raises:
        ValueError: ``dataroot_prompt`` missing, bad ``prompt_choice``, d mismatch, a corrupt store value
            (:meth:`PromptStore.verify`), or images without a prompt.
    """

    def __init__(self, opt):
        if not opt.get('dataroot_prompt'):
            raise ValueError(
                'PromptPairedImageDataset needs the option dataroot_prompt: the prompt LMDB built by '
                'scripts/make_prompt_lmdb.py.'
            )
        # basicsr stores and later mutates its option dict (io_backend 'type' is popped on the first item, db_paths
        # added for lmdb): give it a private copy so the caller's options stay as written.
        opt = copy.deepcopy(opt)
        super().__init__(opt)
        default_choice = 'random' if opt.get('phase') == 'train' else 'first'
        self.prompt_choice = opt.get('prompt_choice') or default_choice
        if self.prompt_choice not in PROMPT_CHOICES:
            raise ValueError(f'prompt_choice must be one of {PROMPT_CHOICES}, got {self.prompt_choice!r}.')
        pattern = opt.get('prompt_key_pattern', DEFAULT_SUBIMAGE_PATTERN)
        self.prompt_store = PromptStore(opt['dataroot_prompt'], expected_dim=opt.get('prompt_dim'))
        try:
            # Every value's length, once, here in the main process: a corrupt store fails now, not mid-training.
            self.prompt_store.verify()
            self.prompt_keys = self._match_prompt_keys(pattern)
        except FileNotFoundError as err:  # say which option of which dataset points there
            raise FileNotFoundError(f'dataroot_prompt of dataset {opt.get("name")!r}: {err}') from None
        # Drop this reader's handle: each DataLoader worker opens its own on its first read (the store notices the
        # new process id), and the main process only reads again if it iterates itself (num_workers: 0).
        self.prompt_store.close()

    def _image_key(self, gt_path):
        # For the lmdb backend basicsr's path already is the key.
        return gt_path if self.io_backend_opt.get('type') == 'lmdb' else image_key(gt_path)

    def _match_prompt_keys(self, pattern):
        store_keys = set(self.prompt_store.keys())
        matched, missing = [], []
        for entry in self.paths:
            key = self._image_key(entry['gt_path'])
            if key not in store_keys:
                key = parent_key(key, pattern)
            if key not in store_keys:
                missing.append(key)
            matched.append(key)
        if missing:
            raise ValueError(
                f'Prompt store {self.prompt_store.path} has no prompt for {len(missing)} of {len(self.paths)} images '
                f'of {self.gt_folder}, e.g. {missing[:5]}; build the store from the same images / captions (keys are '
                'file names without extension; sub-images <name>_s001 use <name>).'
            )
        return matched

    def _pick(self, emb):
        """One prompt (d,) out of the image's (m, d) embeddings."""
        if self.prompt_choice == 'first' or emb.shape[0] == 1:
            return emb[0]
        if self.prompt_choice == 'random':
            # torch's generator, not Python's `random`: basicsr draws crops and flips from `random`, so a baseline
            # (PairedImageDataset) and its "+" twin with the same seed see the same patches. PyTorch seeds torch's
            # generator in every DataLoader worker.
            return emb[int(torch.randint(emb.shape[0], ()))]
        mean = emb.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def __getitem__(self, index):
        data = super().__getitem__(index)
        key = self.prompt_keys[index]
        data['prompt'] = torch.from_numpy(np.ascontiguousarray(self._pick(self.prompt_store.get(key)), np.float32))
        data['prompt_key'] = key
        return data
