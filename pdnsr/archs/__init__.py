"""Networks, registered with basicsr's ARCH_REGISTRY on import: EDSRPlus, RCANPlus, RDN, RDNPlus, PromptGuided,
RRDBNetPlus, SwinIRPlus."""

from pdnsr.archs.dcm_arch import (
    DynamicCorrelationModule,
    convert_state_dict_to_compact,
    dcm_modules,
    keep_attention,
    select_dcms,
    set_dcm_temperature,
    takes_prompt,
    type_takes_prompt,
)
from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.prompt_guided_arch import PromptGuided, PromptGuidedMixin, RRDBNetPlus, SwinIRPlus
from pdnsr.archs.rcan_plus_arch import RCANPlus
from pdnsr.archs.rdn_arch import RDN, RDNPlus

__all__ = [
    'DynamicCorrelationModule',
    'EDSRPlus',
    'PromptGuided',
    'PromptGuidedMixin',
    'RCANPlus',
    'RDN',
    'RDNPlus',
    'RRDBNetPlus',
    'SwinIRPlus',
    'convert_state_dict_to_compact',
    'dcm_modules',
    'keep_attention',
    'select_dcms',
    'set_dcm_temperature',
    'takes_prompt',
    'type_takes_prompt',
]
