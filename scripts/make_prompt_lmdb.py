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

try:
    import pdnsr  # noqa: F401  (applies the basicsr compatibility patches)
except ImportError:
    # Run as `python scripts/make_prompt_lmdb.py` from a checkout that was not pip-installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pdnsr  # noqa: F401

from pdnsr.prompts.build import KINDS, build_prompt_store  # noqa: E402
from pdnsr.prompts.encoder import PromptEncoder  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Encode captions / images with open_clip and store them in a prompt LMDB (key = image key).'
    )
    parser.add_argument('--kind', required=True, choices=KINDS, help='prompt kind: text, image or mixed')
    parser.add_argument('--out', required=True, help='output store directory, e.g. prompts.lmdb')
    parser.add_argument('--captions', help='caption JSON: {key: [captions]}, {set: {key: [captions]}} or COCO')
    parser.add_argument('--captions-subset', help='set name inside a {set: {key: [captions]}} caption file')
    parser.add_argument('--images', help='folder of images (keys = file names without extension)')
    parser.add_argument('--view', choices=('flip', 'identity'), default='flip', help='image view (default flip)')
    parser.add_argument('--clip-model', default='ViT-B-32', help='open_clip architecture (default ViT-B-32)')
    parser.add_argument(
        '--clip-pretrained',
        default='openai',
        help="open_clip pretrained tag, a local checkpoint file, or 'none' for random weights (tests only)",
    )
    parser.add_argument('--batch-size', type=int, default=32, help='keys per batch (default 32)')
    parser.add_argument('--device', default='cpu', help='torch device for the encoder, e.g. cpu or cuda:0')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing store / unfinished build')
    parser.add_argument('--resume', action='store_true', help='continue the unfinished build OUT.partial')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None):
    """Returns the exit code: 0 on success, 2 on a user error (printed as one line on stderr)."""
    args = parse_args(argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'make_prompt_lmdb.py'
    try:
        if args.overwrite and args.resume:
            raise ValueError('--overwrite and --resume exclude each other.')
        if os.path.exists(args.out) and not args.overwrite:
            # Checked before loading CLIP, which takes seconds.
            raise FileExistsError(f'{args.out} already exists; pass --overwrite to replace it.')
        try:
            encoder = PromptEncoder(args.clip_model, pretrained=args.clip_pretrained, device=args.device)
        except RuntimeError as err:  # weights that cannot be loaded: the message says what to do
            raise ValueError(str(err)) from err
        count = build_prompt_store(
            args.kind,
            args.out,
            encoder,
            captions=args.captions,
            captions_subset=args.captions_subset,
            images_dir=args.images,
            view=args.view,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    print(f'{args.out}: {count} keys', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
