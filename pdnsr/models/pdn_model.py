"""PDNModel: basicsr's SRModel with a prompt, the DCM temperature schedule, attention outputs and a faster step."""

import copy
import os
from collections import OrderedDict
from contextlib import nullcontext

import torch
from basicsr.data import build_dataset
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules, select_dcms, set_dcm_temperature, takes_prompt
from pdnsr.checkpoints import (
    adapt_dcm_layout,
    fit_state_dict,
    network_layout,
    read_checkpoint,
    save_checkpoint,
    state_dict_of,
)
from pdnsr.data.image_files import image_key
from pdnsr.models.model_mixins import CpuFriendlyMixin, DeferredLossLogMixin, MetricsTableMixin, RankZeroValidationMixin
from pdnsr.models.run_checks import check_pretrained_encoder, check_run_options
from pdnsr.models.temperature import TemperatureSchedule, epoch_of_iter, iters_per_epoch
from pdnsr.models.train_options import NonFiniteGuard, SpeedOptions
from pdnsr.utils.visualization import overlay_heatmap


@MODEL_REGISTRY.register()
class PDNModel(CpuFriendlyMixin, DeferredLossLogMixin, MetricsTableMixin, RankZeroValidationMixin, SRModel):
    """SR model whose network may take a prompt embedding: ``net_g(lq, prompt)`` for "+" networks.

    Baseline networks (basicsr ``EDSR``, ``RCAN``, pdnsr ``RDN``) run under this model too and ignore the prompt,
    so a baseline and its "+" twin train from one recipe. Options beyond SRModel's:

    - ``train.temperature``: ``{init, step, every_epochs, min}`` (default the paper's 34 / 3 / 10 / 1). Applied to
      every DCM of ``net_g`` and ``net_g_ema`` from the iteration, with epochs counted as basicsr counts them.
    - ``train.amp`` / ``channels_last`` / ``compile`` / ``accumulate``: :mod:`pdnsr.models.train_options`.
    - ``val.save_attention``: DCM indices (``[0, -1]``) or ``true`` (first and last) whose attention masks are
      saved as heat maps beside the SR images during validation / testing, and sent to tensorboard.
    - ``force_encoder: true``: test with prompt stores of another encoder than the checkpoint's (warns instead).

    Every option is checked before anything is built (:func:`pdnsr.models.run_checks.check_run_options`). Validation
    and testing call the bare network (or its EMA copy) with the prompt: never the DDP wrapper, whose forward would
    post a collective that only rank 0 enters.
    """

    def __init__(self, opt):
        self.stores_record = check_run_options(opt)
        train_set = (opt.get('datasets') or {}).get('train') or {}
        self.speed = SpeedOptions.from_opt(opt.get('train'), train_set.get('batch_size_per_gpu'))
        # The batch's prompts, the temperature schedule and its current value, the fp16 GradScaler, what the
        # running validation is about: set as training and validation go.
        self.prompt = self.temperature_schedule = self.current_temperature = self.scaler = None
        self._num_iter_per_epoch = self._val_context = None
        self._warned = set()
        super().__init__(opt)
        self.prompt_dim = getattr(self.get_bare_model(self.net_g), 'prompt_dim', None)
        self._train_net = self.net_g
        if self.is_train and self.speed.compile is not None:
            # Compiled for the training step only: parameters, checkpoints and EMA keep the module's own names.
            self._train_net = torch.compile(self.net_g, **self.speed.compile)
        if self.is_train:
            get_root_logger().info(f'Training step: {self.speed.describe()}.')

    # ------------------------------------------------------------------ network placement and loading
    def model_to_device(self, net):
        if self.speed.channels_last:  # before DDP: its gradient buckets follow the parameters' layout
            to_channels_last(net)
        return super().model_to_device(net)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """basicsr's loader, through :mod:`pdnsr.checkpoints`: weights-only reading, a paper-bank file converted
        for a compact network, a file of the other router refused, and the file's prompt encoder checked against
        the run's prompt stores."""
        net = self.get_bare_model(net)
        checkpoint = read_checkpoint(load_path, 'path.pretrain_network_g')
        state, used = state_dict_of(checkpoint, load_path, param_key)
        if strict:
            state = fit_state_dict(net, state, load_path, used)
        else:  # fine-tuning, e.g. from a basicsr EDSR: DCM keys may be missing, never of another layout
            state = adapt_dcm_layout(net, state, load_path)
            self._print_different_keys_loading(net, state, strict)
        get_root_logger().info(f'Loading {type(net).__name__} model from {load_path}, with param key: [{used}].')
        net.load_state_dict(state, strict=strict)
        record = provenance.of_checkpoint(checkpoint)
        if record is None and takes_prompt(net):
            self._warn_once(
                f'{load_path} does not record the prompt encoder it was trained with (an older or a basicsr '
                'checkpoint): make sure the prompt stores come from the same CLIP model and weights'
            )
        else:  # pdnsr/train.py and pdnsr/test.py refused a mismatch before any folder (preflight); this one warns
            check_pretrained_encoder(record, self.stores_record, self.opt, load_path, self._warn_once)

    def _warn_once(self, message):
        """basicsr's logger, each message once (training loads ``pretrain_network_g`` into net_g and net_g_ema)."""
        if message not in self._warned:
            self._warned.add(message)
            get_root_logger().warning(message)

    def init_training_settings(self):
        super().init_training_settings()
        if hasattr(self, 'net_g_ema') and self.speed.channels_last:
            to_channels_last(self.net_g_ema)
        if self.speed.amp == 'fp16':
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.nonfinite = NonFiniteGuard(self.opt['train'], self.device, self.opt['path'].get('models', ''))
        if dcm_modules(self.net_g):
            self.temperature_schedule = TemperatureSchedule.from_opt(self.opt['train'].get('temperature'))
            self.set_temperature(self.temperature_schedule.at_epoch(0))

    # ------------------------------------------------------------------ prompt in, training step
    def feed_data(self, data):
        super().feed_data(data)
        if self.speed.channels_last:
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)
        prompt = data.get('prompt')
        self.prompt = None if prompt is None else prompt.to(self.device, non_blocking=True)
        self.lq_path = data.get('lq_path')

    def _run(self, net, lq, prompt):
        return net(lq, prompt) if self.prompt_dim is not None else net(lq)

    def _losses(self, output, gt):
        """(total, {name: loss}) of basicsr's pixel and perceptual losses."""
        losses = OrderedDict()
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(output, gt)
        if self.cri_perceptual:
            percep, style = self.cri_perceptual(output, gt)
            losses.update((k, v) for k, v in (('l_percep', percep), ('l_style', style)) if v is not None)
        return sum(losses.values()), losses

    def optimize_parameters(self, current_iter):
        """One optimiser step on the fed batch, in ``accumulate`` micro-batches, under ``amp`` autocast."""
        self.optimizer_g.zero_grad(set_to_none=True)
        n = self.speed.accumulate
        prompts = [None] * n if self.prompt is None else self.prompt.chunk(n)
        log, loss = OrderedDict(), 0
        autocast = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(self.speed.amp)
        for i, (lq, gt, prompt) in enumerate(zip(self.lq.chunk(n), self.gt.chunk(n), prompts)):
            # Under DDP only the last micro-batch all-reduces the gradients.
            sync = nullcontext() if i == n - 1 or not self.opt['dist'] else self.net_g.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
                    total, losses = self._losses(self._run(self._train_net, lq, prompt), gt)
                total = total / n
                (self.scaler.scale(total) if self.scaler else total).backward()
            loss = loss + total.detach().float()
            for name, value in losses.items():
                log[name] = log.get(name, 0) + value.detach().float() / n
        self.log_dict = self.reduce_loss_dict(log)
        # The GradScaler skips the steps of non-finite fp16 gradients itself (and lowers its scale): not a failure.
        grads = (
            []
            if self.scaler
            else [p.grad for g in self.optimizer_g.param_groups for p in g['params'] if p.grad is not None]
        )
        if not self.nonfinite.step_is_finite(loss, grads, current_iter, get_root_logger().warning):
            self.optimizer_g.zero_grad(set_to_none=True)
            return
        if self.scaler:
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            self.optimizer_g.step()
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

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
        self.nonfinite.check()  # the log is read on the host anyway: the flag costs no extra wait
        log = super().get_current_log()
        if self.current_temperature is not None:
            log['temperature'] = self.current_temperature
        if self.scaler is not None:
            log['grad_scale'] = self.scaler.get_scale()
        return log

    # ------------------------------------------------------------------ saving and resuming
    def save(self, epoch, current_iter):
        """basicsr's save, refused after a non-finite step: the last checkpoint written stays the last good one."""
        self.nonfinite.check()
        super().save(epoch, current_iter)

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        if self.is_train:
            self.nonfinite.check()
        super().validation(dataloader, current_iter, tb_logger, save_img)

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """basicsr's checkpoint layout (``params`` / ``params_ema``) plus the model's record of its prompts
        (:mod:`pdnsr.provenance`), written atomically. Rank 0 only."""
        if self.opt['rank'] != 0:
            return
        nets, keys = (net, param_key) if isinstance(net, list) else ([net], [param_key])
        checkpoint = {
            k: {name: v.cpu() for name, v in self.get_bare_model(n).state_dict().items()} for n, k in zip(nets, keys)
        }
        bare = self.get_bare_model(nets[0])
        checkpoint[provenance.KEY] = provenance.make_record(
            self.opt['network_g'], self.stores_record, self.prompt_dim, network_layout(bare)
        )
        label = 'latest' if current_iter == -1 else current_iter
        save_checkpoint(checkpoint, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save_training_state(self, epoch, current_iter):
        """basicsr's training state (optimisers, schedulers) plus the fp16 GradScaler's, written atomically."""
        if self.opt['rank'] != 0 or current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers]}
        state['schedulers'] = [s.state_dict() for s in self.schedulers]
        if self.scaler is not None:
            state['scaler'] = self.scaler.state_dict()
        save_checkpoint(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if self.scaler is not None and 'scaler' in resume_state:
            self.scaler.load_state_dict(resume_state['scaler'])
            get_root_logger().info(f'Resumed the fp16 GradScaler at scale {self.scaler.get_scale():g}.')

    # ------------------------------------------------------------------ validation, testing, attention export
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._val_context = dict(
            dataset=dataloader.dataset.opt['name'], iter=current_iter, tb_logger=tb_logger, save_img=save_img
        )
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._val_context = None

    def test(self):
        """The output of the EMA network, else of the bare ``net_g``, for the fed batch (no autograd, no DDP)."""
        net = getattr(self, 'net_g_ema', None) or self.get_bare_model(self.net_g)
        request = (self.opt.get('val') or {}).get('save_attention')
        chosen = {}
        if request and self._val_context is not None and self._val_context['save_img']:
            chosen = select_dcms(net, request, 'val.save_attention')
        for dcm in chosen.values():
            dcm.keep_attention = True
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                self.output = self._run(net, self.lq, self.prompt)
            self.attention = {i: dcm.last_attention for i, dcm in chosen.items()}
        finally:
            net.train(was_training)
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


def build_in_process(opt):
    """The model of a training option dict built in this process, as basicsr's pipeline would build it (one process,
    no folders: for benchmarks and tests that step the model themselves)."""
    from basicsr.models import build_model

    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    opt['path'].update({k: 'unused' for k in ('experiments_root', 'models', 'training_states', 'log', 'visualization')})
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.setdefault('phase', phase.split('_')[0])
        dataset_opt['scale'] = opt['scale']
    return build_model(opt)


def to_channels_last(net):
    """The 4-D parameters of ``net`` (convolution kernels) in channels-last layout, in place. Not ``net.to(
    memory_format=...)``: that also converts 5-D tensors, which the paper bank's ``(n, c, d, k, k)`` kernels are."""
    for param in net.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return net


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
