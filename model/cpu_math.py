"""A one-time, single-threaded warm-up of PyTorch's CPU vector math (sin, cos, exp …), run by every loader.

Measured on an Intel Xeon with AMX (torch 2.13, 2 threads): the first transcendental op of a process, when it is
large enough to run on two threads, rounds some elements differently from every later call — a one-time lazy
initialisation racing the second thread.  With Qwen3-VL's RoPE table as that first op, ``cos`` came out
different in 3 of 16 fresh processes (``sin`` first: ``sin`` did), so layer 0's q/k, and then the text features,
changed in the last bits (0.375 on features of max 20.5): a run's numbers depended on the process, not on its
inputs.  One small call first (8 elements, below the parallel grain) takes the initialisation out of any
multi-threaded op; every later call then agrees with itself across processes (16 of 16), on this machine as on
CPUs without the race.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def warm_vector_math() -> None:
    """Run the CPU's vectorised transcendental ops once on a tiny tensor (once per process)."""
    x = torch.linspace(0.1, 1.0, 8)
    x.cos(), x.sin(), x.exp(), x.sigmoid()
