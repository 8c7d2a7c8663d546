"""RCAN+: basicsr's RCAN with DCMs at equal intervals inside each residual group."""

from basicsr.archs.rcan_arch import RCAN
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from pdnsr.archs.plus_util import PromptedHeadTailMixin, check_scale, make_dcms, mean_as_buffer


def dcm_positions(num_block, num_dcm):
    """0-based indices of the blocks after which the DCMs of one group go, spread evenly, the last at the end.

    20 blocks, 3 DCMs -> after blocks 7, 13 and 20 (indices 6, 12, 19). With more DCMs than blocks several DCMs
    follow the same block, in order.
    """
    return [max(0, round(num_block * (j + 1) / num_dcm) - 1) for j in range(num_dcm)]


@ARCH_REGISTRY.register()
class RCANPlus(PromptedHeadTailMixin, RCAN):
    """RCAN (Zhang et al. 2018) with ``num_dcm_per_group`` DCMs (default 3, the paper's) at equal intervals in each
    residual group; basicsr's ``RCAN`` arguments, ``prompt_dim`` and ``dcm`` as for :class:`EDSRPlus` (a basicsr RCAN
    checkpoint loads with only ``dcms.*`` missing).

    ``forward(x, prompt)``: x (B, num_in_ch, h, w), prompt (B, prompt_dim) or None.
    """

    def __init__(
        self,
        num_in_ch,
        num_out_ch,
        num_feat=64,
        num_group=10,
        num_block=16,
        squeeze_factor=16,
        upscale=4,
        res_scale=1,
        img_range=255.0,
        rgb_mean=(0.4488, 0.4371, 0.4040),
        prompt_dim=512,
        num_dcm_per_group=3,
        dcm=None,
    ):
        check_scale(upscale, 'RCANPlus')
        if not isinstance(num_dcm_per_group, int) or num_dcm_per_group < 1:
            raise ValueError(f'RCANPlus: num_dcm_per_group must be a positive integer, got {num_dcm_per_group!r}')
        super().__init__(
            num_in_ch,
            num_out_ch,
            num_feat=num_feat,
            num_group=num_group,
            num_block=num_block,
            squeeze_factor=squeeze_factor,
            upscale=upscale,
            res_scale=res_scale,
            img_range=img_range,
            rgb_mean=rgb_mean,
        )
        mean_as_buffer(self, rgb_mean)
        self.prompt_dim = prompt_dim
        self.dcms = nn.ModuleList(
            make_dcms(num_dcm_per_group, num_feat, prompt_dim, dcm, 'RCANPlus') for _ in range(num_group)
        )
        positions = dcm_positions(num_block, num_dcm_per_group)
        # For each block index, the DCM indices that follow it (usually none).
        self._dcms_after = [[j for j, pos in enumerate(positions) if pos == i] for i in range(num_block)]

    def forward_body(self, x, prompt):
        for group, dcms in zip(self.body, self.dcms):
            h = x
            for block, after in zip(group.residual_group, self._dcms_after):
                h = block(h)
                for j in after:
                    h = h + dcms[j](h, prompt)
            x = group.conv(h) + x
        return x
