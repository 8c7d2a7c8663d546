"""Prompt store (LMDB) and the prompt-aware paired dataset; importing this registers PromptPairedImageDataset."""

from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset
from pdnsr.data.prompt_store import PromptStore, PromptStoreWriter, parent_key

__all__ = ['PromptPairedImageDataset', 'PromptStore', 'PromptStoreWriter', 'parent_key']
