"""Shared test settings.

The networks in the tests are small: one torch thread trains them fastest, and it keeps the suite
from fighting itself on a 2-core machine (notebook kernels and subprocesses set their own).
"""
import torch

torch.set_num_threads(1)
