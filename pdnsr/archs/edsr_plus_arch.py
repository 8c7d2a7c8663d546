"""EDSR+: basicsr's EDSR with one DCM after each residual block."""

from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY

from pdnsr.archs.plus_util import PromptedHeadTailMixin, check_scale, make_dcms, mean_as_buffer


@ARCH_REGISTRY.register()
class EDSRPlus(PromptedHeadTailMixin, EDSR):
    """EDSR (Lim et al. 2017) guided by a prompt embedding.

    Takes basicsr's ``EDSR`` arguments (same parameter names, so an EDSR checkpoint loads with only ``dcms.*``
    missing) plus:

    Args:
        prompt_dim (int): size of the prompt embedding. Default 512 (CLIP ViT-B/32).
        dcm (dict | None): options of every DCM (``num_kernels``, ``kernel_size``, ``router_hidden``,
            ``use_attention``, ``use_dynamic``, ``temperature``, ``init_scale``); None = defaults.

    ``forward(x, prompt)``: x (B, num_in_ch, h, w), prompt (B, prompt_dim) or None.
    """

    def __init__(
        self,
        num_in_ch,
        num_out_ch,
        num_feat=64,
        num_block=16,
        upscale=4,
        res_scale=1,
        img_range=255.0,
        rgb_mean=(0.4488, 0.4371, 0.4040),
        prompt_dim=512,
        dcm=None,
    ):
        check_scale(upscale, 'EDSRPlus')
        super().__init__(
            num_in_ch,
            num_out_ch,
            num_feat=num_feat,
            num_block=num_block,
            upscale=upscale,
            res_scale=res_scale,
            img_range=img_range,
            rgb_mean=rgb_mean,
        )
        mean_as_buffer(self, rgb_mean)
        self.prompt_dim = prompt_dim
        self.dcms = make_dcms(num_block, num_feat, prompt_dim, dcm, 'EDSRPlus')

    def forward_body(self, x, prompt):
        for block, dcm in zip(self.body, self.dcms):
            x = block(x)
            x = x + dcm(x, prompt)
        return x
