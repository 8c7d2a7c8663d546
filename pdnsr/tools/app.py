"""``pdnsr-app``: a local web page (Gradio) to try a trained network on an image with a few prompts.

    pdnsr-app                                            # the demo's EDSR+ (demo_output/), http://127.0.0.1:7860
    pdnsr-app --weights net_g_latest.pth --port 8080     # any pdnsr checkpoint; --opt for one that records no network

Upload an image (or pick a sample photo), give one caption per line, the image itself or an image prompt, Run: the
SR image of each prompt beside bicubic, a before/after slider, the attention masks of chosen DCMs with their colour
bar, the difference of the first two outputs, a PNG download of each, and PSNR / SSIM when the upload is the HR
image. The work is :class:`pdnsr.inference.Upsampler`'s; :class:`Page` is the page's handler without Gradio. The
server binds 127.0.0.1, sends nothing anywhere, and keeps its files in a temporary folder removed on exit. See
``docs/app.md``.
"""

import argparse
import atexit
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time

import numpy as np
from basicsr.data.transforms import mod_crop

from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules
from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import image_size, read_rgb, write_image
from pdnsr.errors import USER_ERRORS, UserError, one_line, run_main
from pdnsr.inference import SELF_PROMPT, Upsampler
from pdnsr.tools.cli import add_clip_arguments
from pdnsr.tools.infer import add_tile_arguments
from pdnsr.tools.sample_data import SAMPLE_CAPTIONS, bicubic_resize, sample_photos
from pdnsr.utils.markdown import markdown_table
from pdnsr.utils.visualization import attention_overlay

DEMO_WEIGHTS = os.path.join('demo_output', 'experiments', 'demo_plus', 'models', 'net_g_latest.pth')
PROMPT_KINDS = ('captions', 'the image itself', 'an image prompt')
MAX_CAPTIONS = 6
AUTO_TILE, AUTO_SIDE = 256, 512  # automatic tiling: LR tiles of 256 for an LR image of more than 512 x 512 pixels
MIN_LR_SIDE = 16  # the LR made from an HR image: SSIM's 11-pixel window still fits after the border crop
CAPTIONS_HINT = 'a sharp photo\na blurry photo'  # the demo's captions
KEEP_RUNS = 8  # the download folders of the last runs kept in the temporary folder


_sample_photos = functools.lru_cache(maxsize=1)(sample_photos)  # read once, on the first pick
# Gradio's launch: nothing shared, no tracebacks in the page; no server-side rendering (it needs Node), MCP server,
# installable app, run history kept in the browser, or footer links.
LAUNCH = dict(share=False, quiet=True, show_error=False, prevent_thread_lock=True, max_file_size='50mb')
BARE = dict(ssr_mode=False, mcp_server=False, pwa=False, run_history=False, footer_links=[])


def _slug(text, size=40):
    return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:size] or 'prompt'


class Page:
    """What the page does, without Gradio: :meth:`run` takes the page's inputs and returns its outputs.

    Args:
        up (Upsampler): the model.
        workdir (str): where the downloads of each run are written (a run folder each, the last ``KEEP_RUNS`` kept).
        max_pixels (int): the largest image (width x height) the page takes.
        tile (int | None): the page's default tile size (None: automatic).
    """

    def __init__(self, up, workdir, max_pixels, tile=None):
        self.up, self.workdir, self.max_pixels, self.tile = up, workdir, int(max_pixels), tile
        self.runs, self._embeddings = 0, {}
        try:  # every DCM with a mask, and those shown by default (the first and the last)
            self.dcms, self.shown_dcms = up.attention_dcms(list(range(len(dcm_modules(up.net))))), up.attention_dcms()
        except ValueError:  # a baseline, or DCMs without masks: no attention panel
            self.dcms = self.shown_dcms = []

    def about(self):
        """The page's first lines: the model, its scale and the encoder its prompts are encoded with."""
        up = self.up
        net = f'{type(up.net).__name__} x{up.scale or "?"}'
        if not up.takes_prompt:
            return f'**{net}**, a baseline network: it takes no prompt (every prompt is ignored).'
        enc, trained = up.encoder, up.trained_encoder  # CLIP loaded, or another one than the model's refused
        if trained:
            said = f'{provenance.describe(trained)}, the encoder the checkpoint records'
        else:
            said = f'open_clip {enc.model_name} with weights {enc.pretrained}, as named (the checkpoint records none)'
        note = ' (random CLIP weights: each caption is a fixed vector, as in the demo)' if enc.random_weights else ''
        return f'**{net}**, prompts encoded by {said}{note}.'

    # ------------------------------------------------------------------ inputs
    def _image(self, upload, sample):
        """The (H, W, 3) uint8 RGB of the upload (first) or the sample photo, and its name."""
        if upload:
            name, rgb = os.path.basename(upload), self._read(upload)
        elif sample:
            if sample not in SAMPLE_CAPTIONS:
                raise UserError(f'no sample photo {sample!r}; pick one of {", ".join(SAMPLE_CAPTIONS)}')
            name, rgb = sample, _sample_photos()[sample]
        else:
            raise UserError('upload an image or pick a sample photo')
        self._check_size(name, *rgb.shape[:2])
        return rgb, os.path.splitext(name)[0]

    def _read(self, path, what=''):
        """(H, W, 3) RGB of an uploaded file, its size checked from its header before it is decoded; one that is no
        image or too large is one line naming it (not its temporary path)."""
        name = f'{what}{os.path.basename(path)}'

        def refused(err):
            why = one_line(err).replace(f'{path}: ', '').replace(path, os.path.basename(path))
            return UserError(f'{name} is not an image the page reads: {why}')

        try:
            size = image_size(path)
        except ValueError as err:  # a header beyond Pillow's decompression-bomb bound
            raise refused(err) from None
        if size:
            self._check_size(name, *size)
        try:
            return read_rgb(path)
        except USER_ERRORS as err:
            raise refused(err) from None

    def _check_size(self, name, h, w):
        if h * w > self.max_pixels:
            limit = f'more than the {self.max_pixels} this page takes (--max-pixels); pdnsr-infer --tile takes it'
            raise UserError(f'{name} is {w}x{h} = {w * h} pixels, {limit}')

    def _prompts(self, kind, captions, prompt_image):
        """``(prompts, labels)``: what :meth:`Upsampler.enhance_many` takes, and a label per prompt."""
        if not self.up.takes_prompt:
            return [None], ['no prompt (baseline network)']
        if kind == PROMPT_KINDS[1]:
            return [SELF_PROMPT], ['the image itself']
        if kind == PROMPT_KINDS[2]:
            if not prompt_image:
                raise UserError('upload the image prompt (or choose captions)')
            return [self._read(prompt_image, 'image prompt ')], [f'image prompt {os.path.basename(prompt_image)}']
        lines = [line.strip() for line in (captions or '').splitlines() if line.strip()]
        if not lines:
            raise UserError('enter at least one caption, one per line')
        if len(lines) > MAX_CAPTIONS:
            raise UserError(f'{len(lines)} captions: the page takes at most {MAX_CAPTIONS} at once')
        for i, text in enumerate(lines, 1):
            try:
                self.up.check_prompt(text)
            except USER_ERRORS as err:
                raise UserError(one_line(err).replace('--prompt', f'caption {i}', 1)) from None
        new = [t for t in dict.fromkeys(lines) if t not in self._embeddings]
        if new:  # in one batch; a caption given again is not encoded again
            if len(self._embeddings) > 1000:
                self._embeddings.clear()
            self._embeddings.update(zip(new, self.up.encode_texts(new)))
        return [self._embeddings[t] for t in lines], lines

    def _tile(self, tile, lr):
        if tile in (None, '', 0):
            return None if lr.shape[0] * lr.shape[1] <= AUTO_SIDE**2 else AUTO_TILE
        if float(tile) != int(tile) or int(tile) < 0:
            raise UserError(f'tile {tile}: give 0 (automatic) or a positive number of LR pixels')
        return int(tile)

    # ------------------------------------------------------------------ the run
    def run(self, upload, sample, kind, captions, prompt_image=None, have_hr=False, tile=None, dcms=(), progress=None):
        """One click of Run: a dict of the page's outputs, every picture a PNG in this run's folder of
        :attr:`workdir`. ``status``: one line (``error: ...`` for a bad input, and then nothing else); ``pictures``
        {label: path}, bicubic first, then the SR image of each prompt (also ``files``, the downloads);
        ``attention`` [(path, label)]; ``difference`` (path, label) or None; ``metrics``: markdown."""
        self.runs += 1
        try:
            return self._run(upload, sample, kind, captions, prompt_image, have_hr, tile, dcms, progress)
        except USER_ERRORS as err:  # one line in the page; the server goes on
            status = f'Run {self.runs}: error: {one_line(err)}'
            return {'status': status, 'pictures': {}, 'attention': [], 'difference': None, 'metrics': '', 'files': []}

    def _run(self, upload, sample, kind, captions, prompt_image, have_hr, tile, dcms, progress):
        progress = progress or (lambda fraction, desc: None)
        start, up, s, hr = time.perf_counter(), self.up, self.up.scale, None
        progress(0.0, 'reading the image')
        rgb, key = self._image(upload, sample)
        if have_hr:
            if not s:
                raise UserError('the scale of this network is unknown: the page cannot make an LR image')
            hr = mod_crop(rgb, s)
            if min(hr.shape[:2]) < MIN_LR_SIDE * s:
                raise UserError(f'the HR image is {rgb.shape[1]}x{rgb.shape[0]}: its sides need {MIN_LR_SIDE * s} px')
            rgb = blur_downsample(hr, s, sigma=0)  # the project's bicubic: the LR of the data preparation
        prompts, labels = self._prompts(kind, captions, prompt_image)
        chosen = sorted({int(i) for i in dcms or ()} & set(self.dcms))
        tile = self._tile(self.tile if tile is None else tile, rgb)
        progress(0.2, f'super-resolving under {len(prompts)} prompt(s)' + (f' in tiles of {tile}' if tile else ''))
        results = up.enhance_many(rgb, prompts, tile=tile, attention=chosen or False)
        progress(0.8, 'drawing the outputs')
        srs = [r[0] for r in results] if chosen else results
        s = s or srs[0].shape[0] // rgb.shape[0]
        names = [f'SR {i}: {label[:60]}' for i, label in enumerate(labels, 1)]
        arrays = {'bicubic': bicubic_resize(rgb, s), **dict(zip(names, srs))}
        png = functools.partial(_write_png, self._folder(), f'{key}_x{s}')
        files = [png(f'{i}_{_slug(label)}', sr) for i, (label, sr) in enumerate(zip(labels, srs), 1)]
        out = {'pictures': dict(zip(arrays, [png('bicubic', arrays['bicubic']), *files])), 'files': files}
        out['attention'], out['difference'] = [], None
        for i, (name, result) in enumerate(zip(names, results if chosen else ()), 1):
            for j, mask in result[1].items():
                picture = attention_overlay(np.ascontiguousarray(result[0][..., ::-1]), mask)[..., ::-1]
                out['attention'].append((png(f'{i}_attention_dcm{j}', picture), f'{name} · DCM {j}'))
        if len(srs) > 1:
            diff = np.abs(srs[0].astype(np.int16) - srs[1]).max(axis=2)
            peak = int(diff.max())
            gain = 255 / peak if peak else 1.0
            picture = np.repeat(np.clip(diff * gain, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            label = f'|SR 1 − SR 2|: largest channel difference {peak}/255, shown ×{gain:.1f}'
            out['difference'] = (png('difference', picture), label)
        out['metrics'] = '' if hr is None else self._metrics(arrays, hr, s)
        h, w = rgb.shape[:2]
        size = f'{w}x{h} -> {w * s}x{h * s} (x{s}' + (f', tiles of {tile}' if tile else '') + ')'
        out['status'] = f'Run {self.runs}: {len(srs)} SR image(s), {size} in {time.perf_counter() - start:.1f} s'
        progress(1.0, 'done')
        return out

    @staticmethod
    def _metrics(pictures, hr, scale):
        """PSNR / SSIM of every picture ({label: RGB}) against ``hr`` (RGB), as the project scores: Y channel,
        ``scale`` border pixels cropped (basicsr's metrics, on BGR)."""
        from basicsr.metrics import calculate_psnr, calculate_ssim

        rows, gt = [], hr[..., ::-1]
        for name, picture in pictures.items():
            psnr, ssim = (
                f(picture[..., ::-1], gt, scale, test_y_channel=True) for f in (calculate_psnr, calculate_ssim)
            )
            rows.append([name, f'{psnr:.2f}', f'{ssim:.4f}'])
        note = f'Against the HR image: Y channel, {scale} border pixels cropped; the LR was made by bicubic x1/{scale}.'
        return markdown_table(['output', 'PSNR (dB)', 'SSIM'], rows, right=(1, 2)) + f'\n\n{note}'

    def _folder(self):
        """This run's folder in :attr:`workdir`; the folders of older runs but the last ``KEEP_RUNS`` removed."""
        runs = sorted(d for d in os.listdir(self.workdir) if d.startswith('run'))
        for old in runs[: max(0, len(runs) - KEEP_RUNS + 1)]:
            shutil.rmtree(os.path.join(self.workdir, old), ignore_errors=True)
        folder = os.path.join(self.workdir, f'run{self.runs:05d}')
        os.makedirs(folder, exist_ok=True)
        return folder


def _write_png(folder, stem, name, rgb):
    path = os.path.join(folder, f'{stem}_{name}.png')
    write_image(path, np.ascontiguousarray(rgb[..., ::-1]))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# the Gradio page
def build_blocks(page, gr):
    """The ``gr.Blocks`` of ``page`` (Gradio imported by the caller, after its environment is set)."""
    up = page.up
    with gr.Blocks(title='pdnsr', analytics_enabled=False, delete_cache=(600, 1800)) as blocks:
        gr.Markdown(f'## pdnsr: prompt-guided super-resolution\n{page.about()}')
        with gr.Row():
            with gr.Column():
                upload = gr.File(label='image (LR, or HR with the option below)', elem_id='upload')
                sample = gr.Dropdown(list(SAMPLE_CAPTIONS), value=None, label='or a sample photo', elem_id='sample')
                hr_label = f'I have the HR image: make the LR by bicubic x1/{up.scale or "?"} and show PSNR / SSIM'
                have_hr = gr.Checkbox(label=hr_label, elem_id='have-hr')
            with gr.Column():
                prompt = dict(label='prompt', interactive=up.takes_prompt, elem_id='kind')  # a baseline takes none
                kind = gr.Radio(list(PROMPT_KINDS), value=PROMPT_KINDS[0], **prompt)
                hint = f'captions, one per line (at most {MAX_CAPTIONS})'
                captions = gr.Textbox(lines=3, label=hint, placeholder=CAPTIONS_HINT, elem_id='captions')
                prompt_image = gr.File(label='image prompt', visible=False, elem_id='prompt-image')
            with gr.Column():
                auto = f'0: tiles of {AUTO_TILE} beyond {AUTO_SIDE}x{AUTO_SIDE}'
                tile = gr.Number(page.tile or 0, precision=0, minimum=0, label=f'tile (LR px; {auto})', elem_id='tile')
                label = 'attention masks of DCMs'
                dcms = gr.CheckboxGroup(page.dcms, value=page.shown_dcms, label=label, elem_id='dcms')
                button = gr.Button('Run', variant='primary', elem_id='run')
        status = gr.Markdown(elem_id='status')
        shown = dict(height='auto', object_fit='contain')  # whole pictures: the masks' colour bar too
        gallery = gr.Gallery(label='bicubic and the SR image of each prompt', columns=3, elem_id='sr', **shown)
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    left = gr.Dropdown(label='slider: left', elem_id='left')
                    right = gr.Dropdown(label='slider: right', elem_id='right')
                slider = gr.ImageSlider(label='before / after', max_height=400, elem_id='slider')
            with gr.Column():
                difference = gr.Image(label='difference of the first two outputs', height=480, elem_id='difference')
        label = 'attention masks over the SR image (colour bar: 0 to 1)'
        attention = gr.Gallery(label=label, columns=4, elem_id='attention', **shown)
        with gr.Row():
            metrics = gr.Markdown(elem_id='metrics')
            files = gr.File(label='downloads (PNG)', file_count='multiple', interactive=False, elem_id='downloads')
        images = gr.State({})

        def click(*inputs, progress=gr.Progress()):  # noqa: B008  (how Gradio hands a handler its progress bar)
            out = page.run(*inputs, progress=lambda fraction, desc: progress(fraction, desc=desc))
            pictures = out['pictures']
            pair = list(pictures)[:2] if len(pictures) > 1 else [None, None]  # before / after: bicubic / SR 1
            diff = out['difference'] or (None, 'difference of the first two outputs')
            choices = [gr.update(choices=list(pictures), value=v) for v in pair]
            gallery, difference = [(p, n) for n, p in pictures.items()], gr.update(value=diff[0], label=diff[1])
            rest = (out['metrics'], out['files'] or None, pictures)
            return out['status'], gallery, *choices, slide(pictures, *pair), out['attention'], difference, *rest

        def slide(pictures, a, b):  # None once the run's files are gone (KEEP_RUNS later runs of other tabs)
            pair = [pictures.get(a), pictures.get(b)]
            return tuple(pair) if all(p and os.path.isfile(p) for p in pair) else None

        inputs = [upload, sample, kind, captions, prompt_image, have_hr, tile, dcms]
        outputs = [status, gallery, left, right, slider, attention, difference, metrics, files, images]
        button.click(click, inputs, outputs, show_progress='full', show_progress_on=[gallery])  # one progress bar
        for choice in (left, right):
            choice.input(slide, [images, left, right], slider)
        by_kind = [captions, prompt_image]  # what the chosen kind of prompt needs
        kind.change(lambda k: [gr.update(visible=k == PROMPT_KINDS[i]) for i in (0, 2)], kind, by_kind)
    return blocks


def build_parser(prog='pdnsr-app'):
    about = 'A local web page to super-resolve images with a pdnsr network under prompts; nothing is sent anywhere.'
    parser = argparse.ArgumentParser(prog=prog, description=about)
    parser.add_argument('--weights', help=f'checkpoint .pth (default: the demo model, {DEMO_WEIGHTS})')
    parser.add_argument('--opt', help='option YAML with network_g (default: the network the checkpoint records)')
    add_clip_arguments(parser, for_model=True)
    add_tile_arguments(parser, f'automatic: tiles of {AUTO_TILE} for an LR image over {AUTO_SIDE}x{AUTO_SIDE}')
    parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
    parser.add_argument('--host', default='127.0.0.1', help='address to bind (default 127.0.0.1: this machine only)')
    parser.add_argument('--max-pixels', type=int, default=1 << 20, help='largest image taken, w x h (default 1048576)')
    return parser


def _stop(signum, frame):
    raise KeyboardInterrupt


def run(args):
    """Load the model, serve the page until Ctrl-C (or SIGTERM); the temporary folder is removed on the way out."""
    if importlib.util.find_spec('gradio') is None:
        raise UserError('the web page needs Gradio (Python >= 3.10): pip install -e ".[app]"')
    if args.max_pixels < 1:
        raise UserError(f'--max-pixels must be a positive number of pixels, got {args.max_pixels}')
    with socket.socket() as probe:  # before the model loads
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise UserError(f'--host {args.host} --port {args.port}: {err.strerror or err}; choose another') from None
    weights = args.weights or DEMO_WEIGHTS
    if not args.weights and not os.path.isfile(DEMO_WEIGHTS):
        raise UserError(
            f'no --weights and no demo model at {DEMO_WEIGHTS}: run the demo first (python '
            'scripts/demo.py), or pass --weights MODEL.pth'
        )
    clip = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, force_encoder=args.force_encoder)
    up = Upsampler.from_checkpoint(weights, args.opt, args.device, tile_pad=args.tile_pad, warn=_warn, **clip)
    workdir = tempfile.mkdtemp(prefix='pdnsr-app-')
    atexit.register(shutil.rmtree, workdir, True)  # also when the process ends another way than below
    try:
        page = Page(up, workdir, args.max_pixels, args.tile)
        about = page.about()  # loads CLIP (or refuses another encoder than the model's) before the page opens
        os.environ.update(GRADIO_TEMP_DIR=os.path.join(workdir, 'gradio'), GRADIO_ANALYTICS_ENABLED='False')
        import gradio as gr

        blocks = build_blocks(page, gr)
        blocks.queue(default_concurrency_limit=1)  # one run at a time: the network is shared
        signal.signal(signal.SIGTERM, _stop)
        blocks.launch(server_name=args.host, server_port=args.port, **LAUNCH, **BARE)
        print(f'pdnsr-app: {weights}: {about.replace("**", "")}')
        print(f'pdnsr-app: serving http://{args.host}:{args.port} (Ctrl-C stops; files in {workdir}, removed then)')
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print('pdnsr-app: stopped')
        finally:
            blocks.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _warn(message):
    print(f'warning: {message}', file=sys.stderr)


def main(argv=None, prog='pdnsr-app'):
    """Entry point of ``pdnsr-app``: 0 when stopped; 2 for a user error at start-up (one line on stderr)."""
    return run_main(lambda: run(build_parser(prog).parse_args(argv)), prog)


if __name__ == '__main__':
    sys.exit(main())
