"""PDNModel: basicsr's SRModel with a prompt, the DCM temperature schedule, and attention-mask outputs."""

import copy
import os

from basicsr.data import build_dataset
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

from pdnsr.archs.dcm_arch import dcm_modules, select_dcms, set_dcm_temperature, takes_prompt
from pdnsr.archs.network_options import check_network_options
from pdnsr.data.image_files import image_key
from pdnsr.data.prompt_store import PromptStore
from pdnsr.models.model_mixins import CpuFriendlyMixin, DeferredLossLogMixin, MetricsTableMixin
from pdnsr.models.temperature import TemperatureSchedule, epoch_of_iter, iters_per_epoch
from pdnsr.utils.visualization import overlay_heatmap


@MODEL_REGISTRY.register()
class PDNModel(CpuFriendlyMixin, DeferredLossLogMixin, MetricsTableMixin, SRModel):
    """SR model whose network may take a prompt embedding: ``net_g(lq, prompt)`` for "+" networks.

    Baseline networks (basicsr ``EDSR``, ``RCAN``, pdnsr ``RDN``) run under this model too and ignore the prompt,
    so a baseline and its "+" twin train from one recipe. Options beyond SRModel's:

    - ``train.temperature``: ``{init, step, every_epochs, min}`` (default the paper's 34 / 3 / 10 / 1). Applied to
      every DCM of ``net_g`` and ``net_g_ema`` from the iteration, with epochs counted as basicsr counts them.
    - ``val.save_attention``: DCM indices (``[0, -1]``) or ``true`` (first and last) whose attention masks are
      saved as heat maps beside the SR images during validation / testing, and sent to tensorboard.

    SRModel's own training step and test call ``net_g(lq)``; a forward pre-hook on ``net_g`` / ``net_g_ema`` adds
    the batch's prompt there, so their loss assembly, EMA and logging are basicsr's.
    """

    def __init__(self, opt):
        check_network_options(opt['network_g'])
        self.prompt = None
        self.temperature_schedule = None
        self.current_temperature = None
        self._num_iter_per_epoch = None
        self._val_context = None
        super().__init__(opt)
        self.prompt_dim = getattr(self.get_bare_model(self.net_g), 'prompt_dim', None)
        self._check_datasets()
        for net in (self.net_g, getattr(self, 'net_g_ema', None)):
            if net is not None and takes_prompt(net):
                net.register_forward_pre_hook(self._add_prompt)

    # ------------------------------------------------------------------ prompt in
    def _add_prompt(self, net, args):
        """Forward pre-hook: ``net(lq)`` becomes ``net(lq, prompt)`` with the prompt of the batch fed last."""
        return (*args, self.prompt) if len(args) == 1 else None

    def feed_data(self, data):
        super().feed_data(data)
        prompt = data.get('prompt')
        self.prompt = None if prompt is None else prompt.to(self.device, non_blocking=True)
        self.lq_path = data.get('lq_path')

    def _check_datasets(self):
        """Every dataset of a "+" network needs prompts of the network's size: say so before any training."""
        if self.prompt_dim is None:
            return
        net_type = self.opt['network_g']['type']
        for phase, dataset_opt in (self.opt.get('datasets') or {}).items():
            path = dataset_opt.get('dataroot_prompt')
            if not path:
                raise ValueError(
                    f'datasets.{phase}: network_g type {net_type} takes prompts but this dataset has no '
                    f'dataroot_prompt; use type: PromptPairedImageDataset with dataroot_prompt: '
                    f'path/to/prompts.lmdb (build one with scripts/make_prompt_lmdb.py)'
                )
            store_dim = PromptStore(path).dim
            if store_dim != self.prompt_dim:
                raise ValueError(
                    f'datasets.{phase}.dataroot_prompt: {path} holds prompt embeddings of size '
                    f'{store_dim} but network_g.prompt_dim is {self.prompt_dim}; build the store with '
                    f'a CLIP model of size {self.prompt_dim} or set prompt_dim: {store_dim}'
                )

    # ------------------------------------------------------------------ temperature
    def init_training_settings(self):
        super().init_training_settings()
        if dcm_modules(self.net_g):
            self.temperature_schedule = TemperatureSchedule.from_opt(self.opt['train'].get('temperature'))
            self.set_temperature(self.temperature_schedule.at_epoch(0))

    def set_temperature(self, value):
        """Set the router temperature of every DCM in net_g and net_g_ema (EMA copies parameters only)."""
        if value == self.current_temperature:
            return
        for net in (self.net_g, getattr(self, 'net_g_ema', None)):
            if net is not None:
                set_dcm_temperature(net, value)
        self.current_temperature = value

    def _iters_per_epoch(self):
        if self._num_iter_per_epoch is None:
            train_opt = self.opt['datasets']['train']
            self._num_iter_per_epoch = iters_per_epoch(
                count_images(train_opt),
                train_opt.get('dataset_enlarge_ratio', 1),
                train_opt['batch_size_per_gpu'],
                self.opt['world_size'],
            )
            get_root_logger().info(
                f'Temperature schedule {self.temperature_schedule} over epochs of '
                f'{self._num_iter_per_epoch} iterations.'
            )
        return self._num_iter_per_epoch

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """basicsr calls this at every iteration before the step: the learning rate, then the temperature."""
        super().update_learning_rate(current_iter, warmup_iter)
        if self.temperature_schedule is not None:
            epoch = epoch_of_iter(current_iter, self._iters_per_epoch())
            self.set_temperature(self.temperature_schedule.at_epoch(epoch))

    def get_current_log(self):
        log = super().get_current_log()
        if self.current_temperature is not None:
            log['temperature'] = self.current_temperature
        return log

    # ------------------------------------------------------------------ attention export
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._val_context = dict(
            dataset=dataloader.dataset.opt['name'], iter=current_iter, tb_logger=tb_logger, save_img=save_img
        )
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._val_context = None

    def test(self):
        request = (self.opt.get('val') or {}).get('save_attention')
        chosen = {}
        if request and self._val_context is not None and self._val_context['save_img']:
            chosen = select_dcms(getattr(self, 'net_g_ema', self.net_g), request, 'val.save_attention')
        for dcm in chosen.values():
            dcm.keep_attention = True
        try:
            super().test()
            self.attention = {i: dcm.last_attention for i, dcm in chosen.items()}
        finally:
            for dcm in chosen.values():
                dcm.keep_attention, dcm.last_attention = False, None
        if self.attention:
            self._save_attention()

    def _save_attention(self):
        """Heat maps over the SR image, named like basicsr's SR image (``sr_model.py``'s save_img_path) plus
        ``_attention_dcm<i>``, and sent to tensorboard."""
        ctx = self._val_context
        sr = tensor2img([self.output.detach().cpu()])
        sr = sr if sr.ndim == 3 else sr[..., None].repeat(3, axis=2)
        for b, lq_path in enumerate(self.lq_path or []):
            img_name = image_key(lq_path)
            if self.opt['is_train']:
                stem = os.path.join(self.opt['path']['visualization'], img_name, f'{img_name}_{ctx["iter"]}')
            else:
                suffix = self.opt['val'].get('suffix') or self.opt['name']
                stem = os.path.join(self.opt['path']['visualization'], ctx['dataset'], f'{img_name}_{suffix}')
            for index, mask in self.attention.items():
                picture = overlay_heatmap(sr, mask[b, 0])
                imwrite(picture, f'{stem}_attention_dcm{index}.png')
                if ctx['tb_logger'] is not None:
                    ctx['tb_logger'].add_image(
                        f'attention/{ctx["dataset"]}/{img_name}/dcm{index}',
                        picture[..., ::-1].copy(),
                        ctx['iter'],
                        dataformats='HWC',
                    )


def count_images(dataset_opt):
    """Images of one pass over a dataset, as basicsr's dataloader sees them (before ``dataset_enlarge_ratio``).

    A paired dataset (basicsr's or a subclass such as PromptPairedImageDataset, which keeps its paths) is counted
    from basicsr's own path listing (folder, meta_info file or LMDB keys): nothing is decoded and no prompt store is
    opened. Any other dataset type is built to ask its length.
    """
    opt = copy.deepcopy(dataset_opt)  # basicsr's datasets mutate their options
    if issubclass(DATASET_REGISTRY.get(opt['type']), PairedImageDataset):
        return len(PairedImageDataset(opt).paths)
    return len(build_dataset(opt))
