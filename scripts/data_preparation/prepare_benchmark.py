"""An SR test set (Set5, Set14, Urban100, ...) from a folder of HR images, one scale per run: ``pdnsr-prepare
benchmark``, see pdnsr/tools/prepare/benchmark.py.

Example (from the repository root)::

    python scripts/data_preparation/prepare_benchmark.py ../shared/data/benchmarks/Set5 datasets/Set5_x4 \
        --scale 4 --prompts image --clip-pretrained /path/to/open_clip_model.bin
"""

from _launch import run_command

if __name__ == '__main__':
    run_command('benchmark')
