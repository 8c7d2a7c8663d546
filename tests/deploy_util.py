"""Tiny networks of every type pdnsr registers, with DCMs that matter, for the export and spandrel tests."""

import copy
import os

import torch
import yaml
from basicsr.archs import build_network

from pdnsr.archs import dcm_modules

PROMPT_DIM = 512  # CLIP ViT-B/32's, so text prompts through the random-weight encoder fit
_RCAN = dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_group=2, num_block=2, squeeze_factor=4)
_SWIN = dict(embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, img_size=16, mlp_ratio=2.0,
             upsampler='pixelshuffle', img_range=1.0)  # fmt: skip

# name -> network_g. Every registered network that takes a prompt has at least one entry (test_export_onnx checks),
# with the DCM ablations and an x3 / x2-with-padding scale among them.
PROMPTED = {
    'EDSRPlus': dict(type='EDSRPlus', num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=2),
    'EDSRPlus-noatt-compact': dict(
        type='EDSRPlus',
        num_in_ch=3,
        num_out_ch=3,
        num_feat=16,
        num_block=2,
        upscale=2,
        dcm=dict(use_attention=False, bank='compact'),
    ),  # fmt: skip
    'RCANPlus': dict(type='RCANPlus', **_RCAN, upscale=3, num_dcm_per_group=2),
    'RCANPlus-static': dict(type='RCANPlus', **_RCAN, upscale=2, num_dcm_per_group=1, dcm=dict(use_dynamic=False)),
    'RDNPlus': dict(type='RDNPlus', num_feat=16, num_block=2, num_layer=2, growth=8, upscale=2),
    'RRDBNetPlus': dict(
        type='RRDBNetPlus', num_in_ch=3, num_out_ch=3, scale=2, num_feat=16, num_block=2, num_grow_ch=8
    ),  # fmt: skip
    'SwinIRPlus': dict(type='SwinIRPlus', upscale=2, **_SWIN),
    'PromptGuided': dict(
        type='PromptGuided',
        base=dict(type='RDN', num_feat=16, num_block=2, num_layer=2, growth=8, upscale=4),
        dcm_after='rdbs.*',
        dcm=dict(num_kernels=2, kernel_size=5),
    ),
}
BASELINES = {
    'EDSR': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=2),
    'RCAN': dict(type='RCAN', **_RCAN, upscale=2),
    'RDN': dict(type='RDN', num_feat=16, num_block=2, num_layer=2, growth=8, upscale=2),
}
for _opt in PROMPTED.values():
    _opt['prompt_dim'] = PROMPT_DIM
SWIN_FIXED = (24, 20)  # a multiple of the window (4): inputs whose window-padded size it is run exactly


def build(options, seed=0):
    """The network of ``options`` (eval, CPU), seeded, with DCMs far from the identity and a prompt-dependent
    kernel mixture (untrained DCMs start near a zero residual with a uniform mixture)."""
    torch.manual_seed(seed)
    net = build_network(copy.deepcopy(options)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for dcm in dcm_modules(net):
        dcm.reset_parameters(init_scale=3.0)
        dcm.set_temperature(1.0)
        with torch.no_grad():
            if dcm.use_dynamic:
                for param in dcm.router.parameters():
                    param.add_(torch.randn(param.shape, generator=gen))
            if dcm.use_attention:
                dcm.zeta.fill_(4.0)  # a mask between 0 and 1, not a step
                dcm.proj.bias.normal_(generator=gen)
    if options['type'] == 'RRDBNetPlus':  # no mean to add back: centre the random output in [0, 1]
        with torch.no_grad():
            net.conv_last.bias += 0.5
    return net


def write_model(root, name, options, seed=0, record=None):
    """``<root>/<name>.yml`` (network_g) and ``<root>/<name>.pth`` (``{'params': ..., 'pdnsr': record}``) of
    :func:`build`'s network; returns (option file, weights file, network)."""
    net = build(options, seed)
    opt_path = os.path.join(root, f'{name}.yml')
    with open(opt_path, 'w') as f:
        yaml.safe_dump({'network_g': options}, f)
    weights = os.path.join(root, f'{name}.pth')
    checkpoint = {'params': net.state_dict()}
    if record is not None:
        checkpoint['pdnsr'] = record
    torch.save(checkpoint, weights)
    return opt_path, weights, net


def unit_prompts(n, seed=0, dim=PROMPT_DIM):
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randn(n, dim, generator=gen)
    return prompt / prompt.norm(dim=1, keepdim=True)
