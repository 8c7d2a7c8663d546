"""The PDN training set from MS-COCO (paper §4.1): ``pdnsr-prepare coco``, see pdnsr/tools/prepare/coco.py.

Example (from the repository root)::

    python scripts/data_preparation/prepare_coco.py --images datasets/coco/train2017 \
        --captions datasets/coco/annotations/captions_train2017.json --output datasets/coco_train --prompts --lmdb \
        --clip-pretrained /path/to/open_clip_model.bin
"""

from _launch import run_command

if __name__ == '__main__':
    run_command('coco')
