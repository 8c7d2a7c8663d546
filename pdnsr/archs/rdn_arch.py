"""RDN (Zhang et al. 2018, "Residual Dense Network for Image Super-Resolution") and RDN+ with DCMs.

basicsr has no RDN; this one follows the paper: shallow features (two 3x3 convs), D residual dense blocks of C
densely connected 3x3 conv + ReLU layers with growth G and a 1x1 local fusion, global feature fusion (1x1 then 3x3)
over the concatenated block outputs, a global residual to the first shallow feature, and a pixel-shuffle
upsampler (basicsr's ``Upsample``: x3 in one step, powers of two in repeated x2 steps, which covers x8 and x16).
"""

import torch
from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from pdnsr.archs.plus_util import check_scale, make_dcms, mean_as_buffer, plus_signature


class DenseLayer(nn.Module):
    """3x3 conv + ReLU whose output is concatenated to its input: (B, c, h, w) -> (B, c + growth, h, w)."""

    def __init__(self, in_ch, growth):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, growth, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return torch.cat([x, self.act(self.conv(x))], 1)


class ResidualDenseBlock(nn.Module):
    """C dense layers, local feature fusion (1x1 conv back to num_feat) and a local residual."""

    def __init__(self, num_feat, growth, num_layer):
        super().__init__()
        self.layers = nn.Sequential(*(DenseLayer(num_feat + i * growth, growth) for i in range(num_layer)))
        self.lff = nn.Conv2d(num_feat + num_layer * growth, num_feat, 1)

    def forward(self, x):
        return self.lff(self.layers(x)) + x


@ARCH_REGISTRY.register()
class RDN(nn.Module):
    """Residual Dense Network.

    Args:
        num_in_ch, num_out_ch (int): image channels.
        num_feat (int): G0, width of the shallow and fused features. Default 64.
        num_block (int): D, residual dense blocks. Default 16.
        num_layer (int): C, dense layers per block. Default 8.
        growth (int): G, growth rate. Default 64.
        upscale (int): 2, 3, 4, 8 or 16.
        img_range, rgb_mean: input normalisation, as basicsr's EDSR / RCAN.

    ``forward(x)``: x (B, num_in_ch, h, w) in [0, 1] -> (B, num_out_ch, s*h, s*w).
    """

    def __init__(
        self,
        num_in_ch=3,
        num_out_ch=3,
        num_feat=64,
        num_block=16,
        num_layer=8,
        growth=64,
        upscale=4,
        img_range=255.0,
        rgb_mean=(0.4488, 0.4371, 0.4040),
    ):
        super().__init__()
        check_scale(upscale, type(self).__name__)
        self.img_range = img_range
        mean_as_buffer(self, rgb_mean)
        self.sfe1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.sfe2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.rdbs = nn.ModuleList(ResidualDenseBlock(num_feat, growth, num_layer) for _ in range(num_block))
        self.gff = nn.Sequential(nn.Conv2d(num_block * num_feat, num_feat, 1), nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def after_block(self, index, x, prompt):
        """Hook between residual dense blocks; the baseline does nothing."""
        return x

    def forward_features(self, x, prompt):
        x = (x - self.mean) * self.img_range
        shallow = self.sfe1(x)
        h = self.sfe2(shallow)
        outs = []
        for i, rdb in enumerate(self.rdbs):
            h = self.after_block(i, rdb(h), prompt)
            outs.append(h)
        h = self.gff(torch.cat(outs, 1)) + shallow
        return self.conv_last(self.upsample(h)) / self.img_range + self.mean

    def forward(self, x):
        return self.forward_features(x, None)


@ARCH_REGISTRY.register()
class RDNPlus(RDN):
    """RDN with one DCM after each residual dense block.

    Takes ``RDN``'s arguments plus ``prompt_dim`` (default 512) and ``dcm`` (DCM options, as for ``EDSRPlus``).
    ``forward(x, prompt)``: prompt (B, prompt_dim) or None.
    """

    def __init__(self, *args, prompt_dim=512, dcm=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_dim = prompt_dim
        self.dcms = make_dcms(len(self.rdbs), self.sfe2.out_channels, prompt_dim, dcm, 'RDNPlus')

    __init__.__signature__ = plus_signature(RDN)

    def after_block(self, index, x, prompt):
        return x + self.dcms[index](x, prompt)

    def forward(self, x, prompt=None):
        return self.forward_features(x, prompt)
