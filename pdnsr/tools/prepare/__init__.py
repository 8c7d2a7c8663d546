"""Data preparation: COCO, FFHQ / CelebA-HQ and benchmark sets turned into HR/LR folders, image LMDBs and prompt
stores (``pdnsr-prepare coco|faces|benchmark``, :mod:`pdnsr.tools.prepare.cli`; docs/data_preparation.md).

Nothing is imported here: ``import pdnsr`` stays free of the commands.
"""
