"""Prompt encoding (open_clip) and prompt store building."""

from pdnsr.prompts.build import build_prompt_store, load_captions
from pdnsr.prompts.encoder import PromptEncoder

__all__ = ['PromptEncoder', 'build_prompt_store', 'load_captions']
