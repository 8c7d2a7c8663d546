"""PDNModel: basicsr's SRModel with a prompt, the DCM temperature schedule, and attention-mask outputs."""

import copy
import inspect
import os
from collections import OrderedDict

import torch
from basicsr.data import build_dataset
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from pdnsr.archs.dcm_arch import dcm_modules, set_dcm_temperature
from pdnsr.data.prompt_store import PromptStore
from pdnsr.models.temperature import TemperatureSchedule, epoch_of_iter, iters_per_epoch
from pdnsr.utils.visualization import overlay_heatmap


def check_network_options(opt_net):
    """Refuse a ``network_g`` section with options its ``type`` does not take, naming them (before building)."""
    net_type = opt_net.get('type')
    if net_type is None:
        raise ValueError('network_g: missing "type" (e.g. type: RCANPlus)')
    cls = ARCH_REGISTRY.get(net_type)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(opt_net) - set(params) - {'type'})
    if unknown:
        valid = sorted(set(params) - {'self'})
        raise ValueError(f'network_g: unknown option(s) {unknown} for type {net_type}; valid options: {valid}')


@MODEL_REGISTRY.register()
class PDNModel(SRModel):
    """SR model whose network may take a prompt embedding: ``net_g(lq, prompt)`` for "+" networks.

    Baseline networks (basicsr ``EDSR``, ``RCAN``, pdnsr ``RDN``) run under this model too and ignore the prompt,
    so a baseline and its "+" twin train from one recipe. Options beyond SRModel's:

    - ``train.temperature``: ``{init, step, every_epochs, min}`` (default the paper's 34 / 3 / 10 / 1). Applied to
      every DCM of ``net_g`` and ``net_g_ema`` from the iteration, with epochs counted as basicsr counts them.
    - ``val.save_attention``: DCM indices (``[0, -1]``) or ``true`` (first and last) whose attention masks are
      saved as heat maps beside the SR images during validation / testing, and sent to tensorboard.
    """

    def __init__(self, opt):
        if opt.get('num_gpu', 0) and not torch.cuda.is_available():
            # basicsr would otherwise fail deep inside the first .to('cuda') with a torch error.
            raise ValueError(
                f'num_gpu: {opt["num_gpu"]} but this machine has no CUDA device; set num_gpu: 0 (CPU) or num_gpu: auto'
            )
        check_network_options(opt['network_g'])
        self.temperature_schedule = None
        self.current_temperature = None
        self._num_iter_per_epoch = None
        self._val_context = None
        self._metric_rows = []
        super().__init__(opt)
        self.prompt_dim = getattr(self.get_bare_model(self.net_g), 'prompt_dim', None)
        self._check_datasets()

    # ------------------------------------------------------------------ set-up
    def init_training_settings(self):
        super().init_training_settings()
        if dcm_modules(self.net_g):
            self.temperature_schedule = TemperatureSchedule.from_opt(self.opt['train'].get('temperature'))
            self.set_temperature(self.temperature_schedule.at_epoch(0))

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

    def model_to_device(self, net):
        # basicsr wraps DDP with device_ids=[current CUDA device]; on CPU (gloo) DDP takes no device ids.
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False)
            )
        return super().model_to_device(net)

    # ------------------------------------------------------------------ temperature
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
            # The model is built after basicsr's dataloader and never sees it: count the images the same way.
            num_images = len(build_dataset(copy.deepcopy(train_opt)))
            self._num_iter_per_epoch = iters_per_epoch(
                num_images,
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

    # ------------------------------------------------------------------ data and forward
    def feed_data(self, data):
        super().feed_data(data)
        prompt = data.get('prompt')
        self.prompt = None if prompt is None else prompt.to(self.device, non_blocking=True)
        self.lq_path = data.get('lq_path')

    def run_network(self, net):
        """``net(lq, prompt)`` for prompt-guided networks, ``net(lq)`` for baselines."""
        if self.prompt_dim is None:
            return net(self.lq)
        return net(self.lq, self.prompt)

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        self.output = self.run_network(self.net_g)
        loss_dict = OrderedDict()
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                loss_dict['l_style'] = l_style
        sum(loss_dict.values()).backward()
        self.optimizer_g.step()
        # Losses stay on the device; they are reduced (a host sync) only when basicsr asks for the log.
        self.log_dict = OrderedDict((k, v.detach()) for k, v in loss_dict.items())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def get_current_log(self):
        log = self.reduce_loss_dict(self.log_dict)
        if self.current_temperature is not None:
            log['temperature'] = self.current_temperature
        return log

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        chosen = self._attention_dcms(net)
        for dcm in chosen.values():
            dcm.keep_attention = True
        try:
            with torch.no_grad():
                self.output = self.run_network(net)
            self.attention = {i: dcm.last_attention for i, dcm in chosen.items()}
        finally:
            for dcm in chosen.values():
                dcm.keep_attention, dcm.last_attention = False, None
            net.train(was_training)
        if self.attention:
            self._save_attention()

    # ------------------------------------------------------------------ validation extras
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._val_context = dict(
            dataset=dataloader.dataset.opt['name'], iter=current_iter, tb_logger=tb_logger, save_img=save_img
        )
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._val_context = None

    def _attention_dcms(self, net):
        """{index: DCM} whose masks this validation saves (``val.save_attention``); empty outside validation."""
        request = (self.opt.get('val') or {}).get('save_attention')
        if not request or self._val_context is None or not self._val_context['save_img']:
            return {}
        dcms = dcm_modules(net)
        if not dcms:
            return {}
        indices = [0, -1] if request is True else list(request)
        chosen = {}
        for i in indices:
            if not -len(dcms) <= i < len(dcms):
                raise ValueError(
                    f'val.save_attention: DCM index {i} out of range; the network has {len(dcms)} '
                    f'DCMs (indices 0..{len(dcms) - 1}, negative from the end)'
                )
            chosen[i % len(dcms)] = dcms[i]
        return chosen

    def _save_attention(self):
        ctx = self._val_context
        sr = tensor2img([self.output.detach().cpu()])
        sr = sr if sr.ndim == 3 else sr[..., None].repeat(3, axis=2)
        for b, lq_path in enumerate(self.lq_path or []):
            img_name = os.path.splitext(os.path.basename(lq_path))[0]
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

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if not self.opt['is_train']:
            self._metric_rows.append((dataset_name, dict(self.metric_results)))
            self._write_metric_table()

    def _write_metric_table(self):
        """results/<name>/metrics.md: one row per test set, one column per metric (written atomically)."""
        metrics = list(self._metric_rows[0][1])
        lines = ['| dataset | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
        for name, values in self._metric_rows:
            lines.append(f'| {name} | ' + ' | '.join(f'{values[m]:.4f}' for m in metrics) + ' |')
        path = os.path.join(self.opt['path']['results_root'], 'metrics.md')
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
        os.replace(tmp, path)
