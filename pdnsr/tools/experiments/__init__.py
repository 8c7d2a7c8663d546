"""Experiments built from pdnsr's own pieces: the captioned-degradation experiment (demo and benchmark) and the
launcher of training / testing runs in subprocesses."""
