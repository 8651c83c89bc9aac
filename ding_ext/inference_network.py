"""The network as it scores images: an eval-mode copy built for speed, rebuilt whenever the weights change.

Training keeps the plain module; scoring goes through ``InferenceNetwork``, which builds from it:

- BatchNorm folded into the preceding convolutions (``torch.fx.experimental.optimization.fuse``; a network that
  torch.fx cannot trace is used unfolded, with a log line);
- the ``channels_last`` memory format where configured (``'auto'``: on CPU and CUDA, see ``CHANNELS_LAST_AUTO``);
- optionally int8 (``precision='int8'``): a quantised copy, kept only where it agrees with fp32
  (``ding_ext.int8_inference``);
- optionally (``space_to_depth_stem``) the ResNet stem as an exact 4x4 convolution on a space-to-depth image, which
  tensor cores run far better (``ding_ext.space_to_depth_stem``);
- optionally ``torch.compile``: a failure (at compile time or at the first call) falls back to eager with a warning
  naming the error. With ``freeze_weights`` (a frozen reward model) inductor's freezing folds the weights into the
  compiled code (prepacked oneDNN convolutions on CPU: about 2x eager there, against about 1.1x without); such a
  copy is compiled again when the weights change.

The copy is keyed by ``weights_version(network)``, a counter that every in-place change of a parameter or buffer
raises (optimizer steps, ``load_state_dict``, BatchNorm statistics, edits under ``torch.no_grad()``), so a trained
or reloaded network is never scored with stale weights: the new weights are folded again and copied into the built
copy (a compiled copy is not compiled again). Edits through ``tensor.data`` bypass the counter, and so does a
parameter replaced by a new tensor object (the list of tensors is read when the copy is built).

With CUDA graphs (``compile_mode='reduce-overhead'``) a batch is padded with zero images to the next power of two,
so a stream of varying batch sizes records at most one graph per power of two.
"""
import copy
import logging
import warnings
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn

from .space_to_depth_stem import replace_resnet_stem

logger = logging.getLogger(__name__)

# channels_last 'auto', per device type, as measured by bench/reward_inference.py (resnet18, 128 px, batch 64,
# fp32, BatchNorm folded): channels_last ran at about 1.3x NCHW on a 2-core AMD EPYC without AVX-512; on CUDA it is
# the layout cuDNN's tensor-core convolutions prefer (the compiled bf16 reference in bench/results uses it)
CHANNELS_LAST_AUTO = {'cpu': True, 'cuda': True}
CHANNELS_LAST_CHOICES = (True, False, 'auto')
# compile_mode -> inductor options (beside freezing): 'reduce-overhead' records the compiled network as CUDA graphs,
# one launch per scored chunk (one graph per chunk size) instead of one per kernel; it does nothing on the CPU
COMPILE_MODES = {'default': {}, 'reduce-overhead': {'triton.cudagraphs': True}}


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {tuple(COMPILE_MODES)}, got {mode!r}")


def resolve_auto_setting(name: str, setting: Union[bool, str], device: torch.device, auto: bool) -> bool:
    """A true | false | 'auto' setting for ``device``: the setting itself, or ``auto`` (the device's default)."""
    if setting not in CHANNELS_LAST_CHOICES or (setting != 'auto' and not isinstance(setting, bool)):
        raise ValueError(f"{name} must be true, false or 'auto', got {setting!r}")
    return auto if setting == 'auto' else bool(setting)


def resolve_channels_last(setting: Union[bool, str], device: torch.device) -> bool:
    """``channels_last`` for ``device``: the setting itself, or with 'auto' the measured choice of its device type."""
    return resolve_auto_setting('channels_last', setting, device,
                                CHANNELS_LAST_AUTO.get(torch.device(device).type, False))


def resolve_space_to_depth_stem(setting: Union[bool, str], device: torch.device) -> bool:
    """``space_to_depth_stem`` for ``device``: the setting itself, or with 'auto' on for CUDA devices only."""
    return resolve_auto_setting('space_to_depth_stem', setting, device, torch.device(device).type == 'cuda')


def weights_version(network: nn.Module) -> int:
    """A number that grows with every in-place change of the network's parameters and buffers."""
    return sum(t._version for t in weight_tensors(network))


def weight_tensors(network: nn.Module) -> list:
    """The parameters and buffers of ``network`` (``InferenceNetwork`` keeps this list: walking the modules on every
    call cost about 130 us per call on a 2-core CPU, a tenth of a GPU's time for a batch of 256)."""
    return [*network.parameters(), *network.buffers()]


def fold_batchnorm(network: nn.Module) -> Tuple[nn.Module, str]:
    """An eval-mode copy of ``network`` with every BatchNorm folded into its convolution, and how it was built."""
    from torch.fx.experimental.optimization import fuse
    net = copy.deepcopy(network).eval()
    try:
        return fuse(net), 'batchnorm folded'
    except Exception as e:  # noqa: BLE001  (a network torch.fx cannot trace still scores, unfolded)
        logger.info("inference network: BatchNorm not folded (torch.fx could not trace %s: %s: %s)",
                    type(network).__name__, type(e).__name__, e)
        return net, f'batchnorm not folded ({type(e).__name__})'


class InferenceNetwork:
    """Scores NCHW batches with a fast eval-mode copy of ``network``; ``__call__`` returns the logits."""

    def __init__(self, network: nn.Module, channels_last: bool = False, compile: bool = False,
                 freeze_weights: bool = False,
                 quantize: Optional[Callable[[nn.Module], Optional[nn.Module]]] = None,
                 compile_mode: str = 'default', space_to_depth_stem: bool = False) -> None:
        check_compile_mode(compile_mode)
        self.network = network
        self.compile_mode = compile_mode
        self.space_to_depth_stem = bool(space_to_depth_stem)
        self._graphs = False  # compiled with CUDA graphs
        self._tensors: list = []  # weight_tensors(network), read when the copy is built
        # int8 scoring: builds a quantised copy of the folded network (None: it refused one, score in float)
        self.quantize = quantize
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self.freeze_weights = bool(freeze_weights)
        self.compile_error: Optional[str] = None
        self.description = ''
        self._net: Optional[nn.Module] = None
        self._eager: Optional[nn.Module] = None
        self._version: Optional[int] = None

    def _build(self) -> None:
        # scoring calls this under torch.inference_mode; the copy's weights must be normal tensors all the same:
        # CUDA graphs copy inference-mode weights into the graph on every replay, as if they were inputs
        with torch.inference_mode(False), torch.no_grad():
            self._build_copy()

    def _build_copy(self) -> None:
        net, how = fold_batchnorm(self.network)
        if self.space_to_depth_stem and self.quantize is None:
            stem = replace_resnet_stem(net)
            how += f', {stem} as a space-to-depth 4x4 convolution' if stem else ''
        self._tensors = weight_tensors(self.network)
        same_device = self._eager is not None and \
            next(self._eager.parameters()).device == next(net.parameters()).device
        # compiled with frozen weights, or quantised: the weights are baked in, build again
        baked = self._net is not self._eager and (self.freeze_weights or self.quantize is not None)
        if same_device and not baked:  # the same structure: new weights into the built (maybe compiled) copy
            self._eager.load_state_dict(net.state_dict())
            self._version = self._weights_version()
            return
        for p in net.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._eager = self._net = net
        self.description = f"{how}, {'channels_last' if self.channels_last else 'NCHW'}"
        if self.quantize is not None:
            quantised = self.quantize(net)
            if quantised is not None:
                self._net = quantised
                self.description += ', int8'
        elif self.compile:
            try:
                cuda = next(net.parameters()).is_cuda
                options = dict(COMPILE_MODES[self.compile_mode] if cuda else {})
                # freezing folds the weights into the code; CUDA graphs then copied all 48 weight tensors of a
                # ResNet-18 into the graph on every replay (H100 profile), so graphs keep them as static inputs
                if self.freeze_weights and not options.get('triton.cudagraphs'):
                    options['freezing'] = True
                self._net = torch.compile(net, options=options or None)
                self._graphs = bool(options.get('triton.cudagraphs'))
                self.description += ', torch.compile' + (' (weights frozen)' if options.get('freezing') else '') + \
                    (', CUDA graphs' if self._graphs else '')
            except Exception as e:  # noqa: BLE001
                self._compile_failed(e)
        self._version = self._weights_version()

    def _weights_version(self) -> int:
        return sum(t._version for t in self._tensors)

    def _compile_failed(self, error: BaseException) -> None:
        self.compile_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"torch.compile of the reward network failed, scoring in eager mode: {self.compile_error}",
                      RuntimeWarning, stacklevel=3)
        self._net = self._eager
        self._graphs = False
        self.description = self.description.split(', torch.compile')[0] + ' (torch.compile failed)'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._net is None or self._version != self._weights_version():
            self._build()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._net is self._eager or self.quantize is not None:
            return self._net(x)
        n = x.shape[0]
        if self._graphs and n & (n - 1):  # one CUDA graph per power-of-two batch, not one per batch size
            pad = x.new_zeros((2 ** n.bit_length() - n, *x.shape[1:]))
            x = torch.cat([x, pad.contiguous(memory_format=torch.channels_last) if self.channels_last else pad])
        try:
            return self._net(x)[:n]
        except Exception as e:  # noqa: BLE001  (torch.compile errors surface at the first call)
            self._compile_failed(e)
            return self._net(x)[:n]
