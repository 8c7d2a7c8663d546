"""Convert a checkpoint's DCMs from the paper's kernel bank to the compact one, exactly.

    python scripts/convert_dcm_bank.py experiments/train_rcan_x4/models/net_g_latest.pth rcan_x4_compact.pth

Every paper-layout DCM (``weight (n, c, d, k, k)`` + ``proj``) of every state dict in the file (``params`` and
``params_ema`` of a basicsr checkpoint, or a bare state dict) becomes ``kernel (n, c, c, k, k)`` +
``mask_kernel (n, c, k, k)`` (``pdnsr.archs.convert_state_dict_to_compact``); the temperature and everything else
is kept. Load the result into the same network with ``dcm: {bank: compact}`` under ``network_g``: its outputs
equal the original network's up to float rounding. The model's record of its prompts (``pdnsr.provenance``) is kept,
with the new bank. The output is written to a temporary name, then renamed.
"""

import argparse
import copy
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

from pdnsr import provenance  # noqa: E402
from pdnsr.archs.dcm_arch import convert_state_dict_to_compact  # noqa: E402
from pdnsr.checkpoints import dcm_layout_of, read_checkpoint, save_checkpoint  # noqa: E402
from pdnsr.errors import run_main  # noqa: E402
from pdnsr.tools.cli import check_apart  # noqa: E402

PARAM_KEYS = ('params', 'params_ema')


def convert_checkpoint(src, dst):
    """Convert ``src`` into ``dst`` (both paths); returns {state dict key: number of DCMs converted}."""
    checkpoint = read_checkpoint(src, 'checkpoint')
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint {src} holds a {type(checkpoint).__name__}, not a state dict')
    keys = [k for k in PARAM_KEYS if k in checkpoint]
    out, counts = dict(checkpoint), {}
    if keys:
        for key in keys:
            out[key], counts[key] = convert_state_dict_to_compact(checkpoint[key])
    else:
        out, counts['state_dict'] = convert_state_dict_to_compact(checkpoint)
    if not any(counts.values()):
        raise ValueError(
            f'checkpoint {src} has no DCM with the paper kernel bank (no 5-D "weight" beside "proj"): '
            f'it is already compact or has no DCMs'
        )
    record = provenance.of_checkpoint(checkpoint)
    if record is not None and keys:  # the model's record follows it, with the layout it now has (read from its keys)
        record = copy.deepcopy(record)
        layout = dcm_layout_of(out[keys[0]])  # a record comes with params / params_ema
        record['dcm'] = {**(record.get('dcm') or {}), **{k: v for k, v in layout.items() if v is not None}}
        network_g = record.get('network_g')
        if isinstance(network_g, dict):  # an older or hand-made record may lack the section
            network_g['dcm'] = {**(network_g.get('dcm') or {}), 'bank': layout['bank']}
        out[provenance.KEY] = record
    save_checkpoint(out, dst)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Rewrite the DCMs of a pdnsr checkpoint in the compact kernel bank (exact).'
    )
    parser.add_argument('input', help='checkpoint with paper-layout DCMs (basicsr .pth or a bare state dict)')
    parser.add_argument('output', help='where to write the converted checkpoint')
    args = parser.parse_args(argv)

    def convert():
        check_apart(args.output, 'output', reads={'input': args.input})
        counts = convert_checkpoint(args.input, args.output)
        done = ', '.join(f'{key}: {n} DCMs' for key, n in counts.items())
        print(f'{args.output}: {done} converted; build the network with dcm: {{bank: compact}} to load it')

    return run_main(convert, 'convert_dcm_bank.py')


if __name__ == '__main__':
    sys.exit(main())
