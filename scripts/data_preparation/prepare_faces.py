"""Face SR data, FFHQ and CelebA-HQ, x8 / x16 (paper §4.1): ``pdnsr-prepare faces``, see
pdnsr/tools/prepare/faces.py.

Example (from the repository root), once per data set::

    python scripts/data_preparation/prepare_faces.py datasets/ffhq/images1024x1024 datasets/ffhq_512 --prompts \
        --clip-pretrained /path/to/open_clip_model.bin
"""

from _launch import run_command

if __name__ == '__main__':
    run_command('faces')
