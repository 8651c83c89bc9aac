"""Numeric precision of the reward model: fp32, bf16, fp16, or ``auto`` (low precision only where it is native).

``int8`` (CPU only) scores with a quantised copy of the network, checked against fp32 (``ding_ext.int8_inference``).

Emulated bf16 is slower than fp32: on a 2-core CPU without AVX-512 our bf16 path scored 12 images/s against 77 in
fp32, while a CPU with AVX512_BF16 ran bf16 at about 1.7x fp32. ``auto`` therefore picks bf16 on CUDA devices that
support it (fp16 on older ones) and on CPUs with AVX512_BF16 or AMX-BF16, and fp32 everywhere else.
"""
from typing import Optional, Tuple

import torch

# the autocast dtype of each precision; int8 is quantised scoring (ding_ext.int8_inference): autocast and training
# run in fp32
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
CHOICES = tuple(PRECISIONS) + ('auto', )
CPU_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_flags(path: str = '/proc/cpuinfo') -> set:
    """The feature flags of the first CPU in ``path`` (empty where the file does not exist, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: torch.device, flags: Optional[set] = None) -> Tuple[str, str]:
    """``(precision, reason)``: ``precision`` itself unless it is ``auto``, then the native low precision of
    ``device`` or fp32 (``flags``: the CPU's feature flags, read from /proc/cpuinfo by default)."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {precision!r}")
    device = torch.device(device)
    if precision == 'int8':
        from .int8_inference import int8_unavailable
        if device.type != 'cpu':
            raise ValueError(f"precision 'int8' scores on the CPU (fbgemm's int8 kernels); the device is {device}: "
                             "use bf16 or auto there")
        reason = int8_unavailable()
        if reason:
            raise ValueError(f"precision 'int8': {reason}")
        return 'int8', 'set in the config; kept only where the int8 copy agrees with fp32 (ding_ext.int8_inference)'
    if precision != 'auto':
        return precision, 'set in the config'
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return 'bf16', f'{name} runs bf16 natively'
        return 'fp16', f'{name} has no bf16; fp16 autocast with loss scaling'
    if device.type == 'cpu':
        found = sorted((cpu_flags() if flags is None else set(flags)) & set(CPU_BF16_FLAGS))
        if found:
            return 'bf16', f"the CPU has {', '.join(found)}"
        return 'fp32', f"the CPU has none of {', '.join(CPU_BF16_FLAGS)}: bf16 would be emulated, slower than fp32"
    return 'fp32', f'no native low precision known for device type {device.type!r}'
