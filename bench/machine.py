"""The machine description every bench result carries: CPU model and bf16 features, library versions, GPU."""
import os
import platform

import numpy as np
import torch
import torchvision


def machine(device: torch.device = torch.device('cpu')) -> dict:
    model, flags = '', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name') and not model:
                    model = line.split(':', 1)[1].strip()
                elif line.startswith('flags') and not flags:
                    flags = set(line.split(':', 1)[1].split())
    except OSError:
        pass
    model = model or platform.processor()
    info = dict(cpu_model=model, cpu_count=os.cpu_count(), avx512='avx512f' in flags,
                avx512_bf16='avx512_bf16' in flags, amx=sorted(f for f in flags if f.startswith('amx')),
                python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                numpy=np.__version__, torch_threads=torch.get_num_threads())
    try:
        import ding
        info['ding'] = getattr(ding, '__version__', '?')
    except Exception:  # noqa: BLE001  (a bare GPU machine may lack DI-engine)
        info['ding'] = None
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info
