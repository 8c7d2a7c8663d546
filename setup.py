"""pdnsr: prompt-guided dynamic super-resolution as a BasicSR plugin."""

from setuptools import find_packages, setup

setup(
    name='pdnsr',
    version='0.1.0',
    description='Prompt-guided Dynamic Network (PDN) for image super-resolution, as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['pdnsr', 'pdnsr.*']),
    install_requires=[
        'basicsr==1.4.2',
        'torch>=2.1',
        'torchvision>=0.16',
        'open_clip_torch>=2.20',
        'lmdb>=1.4',
        'opencv-python>=4.6',
        'tensorboard>=2.10',
        'numpy',
        'pyyaml',
        'tqdm',
        'scikit-image',
    ],
    extras_require={
        'test': ['pytest>=7', 'ruff>=0.4'],
        # pdnsr-export, pdnsr-infer --onnx, pdnsr.tools.export.spandrel (docs/deploy.md); imported only when used
        'deploy': ['onnx>=1.17', 'onnxruntime>=1.20', 'spandrel>=0.4.2', 'safetensors>=0.4'],
        # pdnsr-app, the local web page (docs/app.md), and its browser test (Debian's Chromium, driven by Playwright)
        'app': ['gradio>=6,<7', 'playwright>=1.50'],
    },
    entry_points={
        'console_scripts': [
            'pdnsr-train=pdnsr.train:main',
            'pdnsr-test=pdnsr.test:main',
            'pdnsr-infer=pdnsr.tools.infer:main',
            'pdnsr-demo=pdnsr.tools.demo:main',
            'pdnsr-prepare=pdnsr.tools.prepare.cli:main',
            'pdnsr-export=pdnsr.tools.export.cli:main',
            'pdnsr-app=pdnsr.tools.app:main',
        ],
    },
)
