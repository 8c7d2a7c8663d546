"""spandrel support: pdnsr networks load through ``spandrel.ModelLoader`` (chaiNNer, ComfyUI, traiNNer-redux).

::

    import pdnsr.tools.export.spandrel, spandrel
    pdnsr.tools.export.spandrel.install()                                                   # once per process
    model = spandrel.ModelLoader().load_from_file('edsr_plus_x4.safetensors')  # an ImageModelDescriptor
    sr = model(lq)                                                             # lq (1, 3, h, w) in [0, 1]

spandrel recognises an architecture by the key names of a state dict and calls the model with the image alone.
pdnsr's networks keep basicsr's key names (so that basicsr checkpoints load into them), so without this module
spandrel takes an RRDBNet+ checkpoint for plain ESRGAN and loads it *without its DCMs*, and does not recognise
EDSR+ or RCAN+. :func:`install` adds one entry per pdnsr network, detected by the DCM keys (``dcms.*.temperature``,
pdnsr's own), ahead of every architecture spandrel has.

Since the model gets no prompt, the file carries one (``pdnsr-export --format spandrel``): a safetensors file with
the network's state dict (compact DCM bank) plus

- ``pdnsr.prompt``: ``(1, prompt_dim)`` float32, the prompt every image gets;
- ``pdnsr.config``: uint8, the UTF-8 JSON ``{'format', 'network_g', 'scale', 'channels', 'checkpoint', 'prompt'}``
  that rebuilds the network (spandrel's loader sees tensors only), also in the file's metadata under ``pdnsr``.

A pdnsr checkpoint without them (a training checkpoint) is refused with a message saying how to add a prompt, rather
than loaded as its base architecture without the DCMs. Loading needs ``import pdnsr`` (done here): the network is
built by basicsr's registry from ``network_g``.
"""

import json

import torch
from basicsr.archs import build_network
from torch import nn

from pdnsr.archs.plus_util import input_multiple
from pdnsr.errors import UserError
from pdnsr.tools.export import require
from pdnsr.utils.files import written_atomically

spandrel = require('spandrel', 'pdnsr.tools.export.spandrel')
safetensors_torch = require('safetensors.torch', 'pdnsr.tools.export.spandrel')

PROMPT_KEY = 'pdnsr.prompt'
CONFIG_KEY = 'pdnsr.config'
FORMAT = 1

# network type -> (name shown by spandrel, keys of the base network that identify it without a stored config,
# supports_half, supports_bfloat16). The dtypes are measured (tests/test_spandrel.py runs each network in both and
# compares it with float32): basicsr's SwinIR builds its attention mask in float32 for sizes other than img_size
# and fails in float16 / bfloat16.
NETWORKS = {
    'EDSRPlus': ('EDSR+', ('conv_first.weight', 'body.0.conv1.weight', 'conv_after_body.weight'), True, True),
    'RCANPlus': ('RCAN+', ('conv_first.weight', 'body.0.residual_group.0.rcab.0.weight'), True, True),
    'RDNPlus': ('RDN+', ('sfe1.weight', 'rdbs.0.lff.weight'), True, True),
    'RRDBNetPlus': ('RRDBNet+', ('conv_first.weight', 'body.0.rdb1.conv1.weight', 'conv_body.weight'), True, True),
    'SwinIRPlus': ('SwinIR+', ('conv_first.weight', 'layers.0.residual_group.blocks.0.norm1.weight'), False, False),
    'PromptGuided': ('PromptGuided', (), False, False),  # any other layout with DCMs; dtypes from its base below
}
# A PromptGuided network's dtypes are those of the "+" network with the same base (others: not measured).
_PLUS_OF_BASE = {base: f'{base}Plus' for base in ('EDSR', 'RCAN', 'RDN', 'RRDBNet', 'SwinIR')}
# Tiling: RCAN's channel attention pools over the whole input, so tiles never match the whole image (inference.md).
_DISCOURAGED_TILING = ('RCANPlus',)

# Without a stored config the keys say only the layout: a PromptGuided network on a base has the keys of the "+"
# network of that base (same names, DCMs at the same places), so the message names both.
NO_PROMPT = (
    'this is a pdnsr checkpoint with DCMs (keys dcms.*{layout}) without a stored prompt: spandrel calls a model with '
    'the image alone, so the prompt must be in the file. Write one with: pdnsr-export --format spandrel --opt '
    'NET.yml --weights MODEL.pth --prompt "a photo of ..." --output model.safetensors (docs/deploy.md)'
)


def _layout(label):
    """How :data:`NO_PROMPT` names what the keys look like for the entry of ``label``."""
    if label == 'PromptGuided':
        return ''
    return f'; laid out as {label} or as a PromptGuided network on {label.rstrip("+")}'


def size_requirements(net):
    """spandrel's ``SizeRequirements`` of ``net``: what it needs of an input's size, by pdnsr's one rule
    (:func:`pdnsr.archs.plus_util.input_multiple`).

    pdnsr's "+" networks take any size from 1 x 1 (measured): RRDBNet+ pads for its pixel-unshuffle at x2 / x1 and
    SwinIR+ to a multiple of its window, by reflection, as pdnsr-infer runs them; so spandrel adds no padding of its
    own and the output equals pdnsr's. A ``PromptGuided`` network is its base with DCMs: basicsr's RRDBNet needs
    multiples of 2 (x2) / 4 (x1), its SwinIR multiples of the window, EDSR / RCAN / RDN nothing.
    """
    return spandrel.SizeRequirements(minimum=0, multiple_of=input_multiple(net), square=False)


def _has_dcms(state_dict):
    return any(key.startswith('dcms.') and key.endswith('.temperature') for key in state_dict)


def read_config(state_dict):
    """The ``pdnsr.config`` JSON of a state dict (a dict), or None when it has none."""
    value = state_dict.get(CONFIG_KEY)
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        return None
    try:
        config = json.loads(bytes(value.flatten().tolist()).decode('utf-8'))
    except ValueError:
        return None
    return config if isinstance(config, dict) and isinstance(config.get('network_g'), dict) else None


class PromptBound(nn.Module):
    """A prompt-guided network with its prompt built in: ``forward(image (B, C, h, w)) -> (B, C, s h, s w)``.

    The prompt is a buffer, so it follows the descriptor's ``.to(device, dtype)``.
    """

    def __init__(self, net, prompt_dim):
        super().__init__()
        self.net = net
        self.register_buffer('prompt', torch.zeros(1, prompt_dim))

    def forward(self, image):
        # The buffer itself for batch 1: a DCM kernel cache, where one is active, recognises the same tensor.
        prompt = self.prompt if image.shape[0] == 1 else self.prompt.expand(image.shape[0], -1)
        return self.net(image, prompt)


class PdnsrArch(spandrel.Architecture):
    """spandrel's view of one pdnsr network type (:data:`NETWORKS`); ``id`` is ``pdnsr.<type>``."""

    def __init__(self, net_type):
        self.net_type = net_type
        self.label, self.base_keys = NETWORKS[net_type][:2]
        super().__init__(id=f'pdnsr.{net_type}', name=f'{self.label} (pdnsr)', detect=self._detect)

    def _detect(self, state_dict):
        """A state dict with DCMs: its stored config names this type, or (no config) the base keys are this type's."""
        if not _has_dcms(state_dict):
            return False
        config = read_config(state_dict)
        if config is not None:
            return config['network_g'].get('type') == self.net_type
        return all(key in state_dict for key in self.base_keys)

    def load(self, state_dict):
        prompt, config = state_dict.get(PROMPT_KEY), read_config(state_dict)
        if not isinstance(prompt, torch.Tensor) or config is None:
            raise spandrel.UnsupportedModelError(NO_PROMPT.format(layout=_layout(self.label)))
        network_g = config['network_g']
        net = build_network(dict(network_g))
        if prompt.numel() != net.prompt_dim:
            raise ValueError(f'{PROMPT_KEY} has {prompt.numel()} values; the network takes prompt_dim={net.prompt_dim}')
        weights = {f'net.{key}': value for key, value in state_dict.items() if not key.startswith('pdnsr.')}
        weights['prompt'] = prompt.float().reshape(1, -1)
        plus = _PLUS_OF_BASE.get((network_g.get('base') or {}).get('type'), self.net_type)
        half, bfloat16 = NETWORKS.get(plus, NETWORKS['PromptGuided'])[2:]
        scale = int(config['scale'])
        in_ch, out_ch = config['channels']
        tiling = spandrel.ModelTiling.DISCOURAGED if plus in _DISCOURAGED_TILING else spandrel.ModelTiling.SUPPORTED
        return spandrel.ImageModelDescriptor(
            PromptBound(net, net.prompt_dim),
            weights,
            architecture=self,
            purpose='SR' if scale > 1 else 'Restoration',
            tags=['pdnsr', network_g['type']],
            supports_half=half,
            supports_bfloat16=bfloat16,
            scale=scale,
            input_channels=int(in_ch),
            output_channels=int(out_ch),
            size_requirements=size_requirements(net),
            tiling=tiling,
        )


def install(registry=None):
    """Register pdnsr's networks with spandrel's ``MAIN_REGISTRY`` (or ``registry``), each detected before every
    architecture the registry holds now (call it after adding others, e.g. spandrel_extra_arches); idempotent.

    Returns:
        list: the ``spandrel.ArchSupport`` entries added (empty when already installed).
    """
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    others = tuple(a.architecture.id for a in registry.architectures() if not a.architecture.id.startswith('pdnsr.'))
    # In the order of NETWORKS: the generic PromptGuided entry, which any layout with DCMs satisfies, comes last.
    entries = [spandrel.ArchSupport(arch, arch.detect, before=others) for arch in map(PdnsrArch, NETWORKS)]
    return registry.add(*entries, ignore_duplicates=True)


def save_spandrel(path, net, network_g, prompt, *, channels=3, metadata=None):
    """Write ``net`` with its prompt as a safetensors file that spandrel loads once :func:`install` ran.

    Args:
        path (str): the ``.safetensors`` file; written under a temporary name, then renamed.
        net (torch.nn.Module): the prompt-guided network, float32; the state dict is saved as it is (give it the
            compact bank: :func:`pdnsr.tools.export.model.to_compact`).
        network_g (dict): the option section that builds ``net``.
        prompt (torch.Tensor): ``(1, prompt_dim)``.
        channels (int): image channels of the input.
        metadata (dict | None): JSON values stored in the config too (provenance, prompt source).

    Returns:
        dict: the config written.
    """
    if getattr(net, 'prompt_dim', None) is None:
        raise UserError(f'{type(net).__name__} is a baseline network: spandrel loads its basicsr checkpoint as it is')
    prompt = prompt.detach().float().reshape(1, -1).contiguous()
    with torch.no_grad():  # scale and output channels, measured
        out = net.eval()(torch.rand(1, channels, 12, 12), prompt)
    config = {
        'format': FORMAT,
        'network_g': network_g,
        'scale': out.shape[-1] // 12,
        'channels': [channels, out.shape[1]],
        **(metadata or {}),
    }
    text = json.dumps(config)
    tensors = {key: value.detach().contiguous().clone() for key, value in net.state_dict().items()}
    tensors[PROMPT_KEY] = prompt
    tensors[CONFIG_KEY] = torch.tensor(list(text.encode('utf-8')), dtype=torch.uint8)
    with written_atomically(path) as tmp:
        safetensors_torch.save_file(tensors, tmp, metadata={'pdnsr': text})
    return config
