"""Build a prompt LMDB (CLIP embeddings of captions and / or images) for PromptPairedImageDataset.

Examples (from the repository root):

    python scripts/make_prompt_lmdb.py --kind text --captions datasets/coco/captions_train2017.json \\
        --out datasets/coco/prompts_text.lmdb
    python scripts/make_prompt_lmdb.py --kind image --images datasets/DIV2K/LR_bicubic/X4 --view flip \\
        --out datasets/DIV2K/prompts_image_x4.lmdb --clip-pretrained /path/to/open_clip_model.bin

An interrupted build leaves only ``OUT.partial``; run the same command with ``--resume`` to finish it.
See docs/prompts.md.
"""

import argparse
import os
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

from pdnsr.errors import run_main  # noqa: E402
from pdnsr.prompts.build import KINDS, build_prompt_store  # noqa: E402
from pdnsr.prompts.encoder import PromptEncoder  # noqa: E402
from pdnsr.tools.cli import add_clip_arguments, add_view_argument, check_apart, check_output_folder  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Encode captions / images with open_clip and store them in a prompt LMDB (key = image key).'
    )
    parser.add_argument('--kind', required=True, choices=KINDS, help='prompt kind: text, image or mixed')
    parser.add_argument('--out', required=True, help='output store directory, e.g. prompts.lmdb')
    parser.add_argument('--captions', help='caption JSON: {key: [captions]}, {set: {key: [captions]}} or COCO')
    parser.add_argument('--captions-subset', help='set name inside a {set: {key: [captions]}} caption file')
    parser.add_argument('--images', help='folder of images (keys = file names without extension)')
    add_view_argument(parser)
    add_clip_arguments(parser)
    parser.add_argument('--batch-size', type=int, default=32, help='keys per batch (default 32)')
    parser.add_argument('--device', default='cpu', help='torch device for the encoder, e.g. cpu or cuda:0')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing store / unfinished build')
    parser.add_argument('--resume', action='store_true', help='continue the unfinished build OUT.partial')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


class EncoderOnDemand:
    """The PromptEncoder of ``args``, loaded when :func:`build_prompt_store` first uses it.

    The builder reads and checks everything else first (the kind's inputs, the caption file, the image folder, the
    output and an unfinished build), so a mistake there is reported at once, not after CLIP has loaded (seconds to
    a minute), and unloadable weights are reported before anything is written.
    """

    def __init__(self, args):
        self._args = args
        self._encoder = None

    def __getattr__(self, name):  # only for what the instance itself lacks: the encoder's attributes
        if self._encoder is None:
            args = self._args
            self._encoder = PromptEncoder(args.clip_model, pretrained=args.clip_pretrained, device=args.device)
        return getattr(self._encoder, name)


def run(args):
    if args.overwrite and args.resume:
        raise ValueError('--overwrite and --resume exclude each other.')
    check_output_folder(args.out, '--out')
    check_apart(args.out, '--out', reads={'--images': args.images}, refers={'--captions': args.captions})
    count = build_prompt_store(
        args.kind,
        args.out,
        EncoderOnDemand(args),
        captions=args.captions,
        captions_subset=args.captions_subset,
        images_dir=args.images,
        view=args.view,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(f'{args.out}: {count} keys', file=sys.stderr)


def main(argv=None):
    """Returns the exit status: 0 on success, 2 on a user error (one line on stderr, :func:`pdnsr.errors.run_main`)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'make_prompt_lmdb.py'
    return run_main(lambda: run(parse_args(argv)), prog)


if __name__ == '__main__':
    sys.exit(main())
