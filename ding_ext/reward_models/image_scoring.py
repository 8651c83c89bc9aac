"""``ImageScoring``: how an image reward model turns images into success probabilities, fast.

The scoring half of ``BaseImageRewardModel``: its config keys (``SCORING_CONFIG``: precision, int8, batch size,
layout, compile, the CUDA upload and stem), the device move that builds the scoring copy of the network
(``ding_ext.inference_network``) and the host-to-GPU uploader (``ding_ext.chunked_scoring``), preprocessing and
``predict_proba``.
"""
from typing import Any, Optional

import torch
import torch.nn as nn

from ..chunked_scoring import PinnedUploader, resolve_pinned_upload, score_in_chunks
from ..image_utils import preprocess_images
from ..inference_network import InferenceNetwork, resolve_channels_last, resolve_space_to_depth_stem, weights_version

SCORING_CONFIG = dict(
    # (str) Numeric precision of inference and training autocast: fp32 | bf16 | fp16 | auto (bf16 or fp16 only
    # where the device runs it natively, else fp32; see ding_ext.precision) | int8 (frozen models on CPU: a
    # quantised copy scores, kept only where it agrees with fp32 on int8_calibration_data; training stays fp32).
    # The choice is logged and kept in ``precision_choice``.
    precision='fp32',
    # (str|None) precision='int8': success/ + failure/ folder of the images the model scores (the collected
    # data), to calibrate the int8 copy on and to check it against fp32 (ding_ext.int8_inference).
    int8_calibration_data=None,
    # (int) precision='int8': images of int8_calibration_data (spread over the folder) that check the int8 copy,
    # and of those the images that calibrate its activation ranges.
    int8_check_images=4096,
    int8_calibration_images=1024,
    # (float) precision='int8': largest change of precision or recall (at the threshold) that keeps int8.
    int8_tolerance=0.005,
    # (int) Images per forward pass in ``estimate()`` / ``compute_rewards()``.
    inference_batch_size=256,
    # (bool|str) Score in the channels_last memory format: true | false | 'auto' (the choice measured per device
    # type by bench/reward_inference.py, see ding_ext.inference_network.CHANNELS_LAST_AUTO).
    channels_last='auto',
    # (bool) Score with a torch.compile'd network (the first call compiles: 1-2 min on a 2-core CPU; a frozen
    # model's weights are compiled in, about 2x eager on CPU); a compile failure falls back to eager with a
    # warning naming the error.
    compile=False,
    # (str) compile=true: 'default', or 'reduce-overhead' (inductor's CUDA graphs: one launch per scored chunk
    # instead of one per kernel; CUDA only, see ding_ext.inference_network.COMPILE_MODES).
    compile_mode='default',
    # (bool|str) Upload host (numpy / CPU) images to a CUDA device through reusable pinned buffers on a side
    # stream, overlapping the scoring of the chunk before (ding_ext.chunked_scoring): true | false | 'auto' (on
    # for CUDA devices). Identical probabilities either way.
    pinned_upload='auto',
    # (bool|str) Score with the ResNet stem (7x7 / stride 2 on 3 channels) rewritten as an exact 4x4 convolution
    # on a 2x2 space-to-depth image (ding_ext.space_to_depth_stem): true | false | 'auto' (on for CUDA devices,
    # where tensor cores run it far faster). Training and checkpoints keep the plain stem.
    space_to_depth_stem='auto',
)


class ImageScoring:
    """Mixin of ``BaseImageRewardModel``: needs ``cfg``, ``network``, ``dtype``, ``_instance`` and, through
    ``RewardModelAPI``, the optimiser-aware ``to_device``."""

    def to_device(self, device: Any = None) -> "ImageScoring":
        """Move the network (and the optimiser state, precision choice: ``RewardModelAPI.to_device``) to ``device``
        (None: stay); scoring then runs there on a fresh eval-mode copy (BatchNorm folded, channels_last as
        configured for that device, maybe compiled), rebuilt whenever the weights change. Returns self."""
        if device is None:
            return self
        if hasattr(self, 'optimizer'):
            super().to_device(device)
        else:  # while __init__ builds the model
            self.device = torch.device(device)
            self.network.to(self.device)
        self.channels_last = resolve_channels_last(self.cfg.channels_last, self.device)
        self.inference_network = InferenceNetwork(self.network, self.channels_last, bool(self.cfg.compile),
                                                  freeze_weights=not self.cfg.cooptrain_reward,
                                                  quantize=self._int8_copy if self.cfg.precision == 'int8' else None,
                                                  compile_mode=self.cfg.compile_mode,
                                                  space_to_depth_stem=resolve_space_to_depth_stem(
                                                      self.cfg.space_to_depth_stem, self.device))
        use_pinned = resolve_pinned_upload(self.cfg.pinned_upload, self.device)
        self.uploader = PinnedUploader(self.device) if use_pinned else None
        return self

    def _int8_copy(self, network: nn.Module) -> Optional[nn.Module]:
        """The int8 copy of the folded network, or None where it disagrees with fp32 (``precision_choice`` says)."""
        from ..int8_inference import build_int8_copy
        quantised, check = build_int8_copy(self, network)
        self.precision_choice = dict(
            precision='int8' if quantised is not None else 'fp32', int8_check=check,
            reason='the int8 copy agrees with fp32' if quantised is not None else
            f"the int8 copy changed precision or recall by more than {check['tolerance']} on {check['data']}")
        return quantised

    def preprocess_images(self, images: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Validated float NCHW batch on the model's device (the one path for training and inference); scoring
        asks for the autocast dtype (bf16/fp16: the values autocast would cast to, one pass fewer)."""
        return preprocess_images(
            images, self.cfg.image_size, self.cfg.normalize, self.device, dtype,
            channels_last=self.channels_last, crop=self.cfg.image_crop,
            antialias=bool(self.cfg.resize_antialias)
        )

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

    @property
    def model_version(self) -> tuple:
        """Identifies this model's current weights: it changes with every training step and every load."""
        return self._instance, weights_version(self.network)

    # True for models whose scoring needs the robot's reward state with the images (a clip model's joint-speed gate)
    needs_states = False

    def predict_proba(self, images: Any, *, states: Any = None) -> torch.Tensor:
        """Success probability per image, float32 on CPU; batched, under ``torch.inference_mode``. ``states`` (the
        robot's reward state per image) is for models that gate on it (``needs_states``); others ignore it.

        Each batch is moved to the device as it comes (uint8 stays uint8; to a CUDA device through pinned memory,
        overlapping the scoring of the chunk before: ``pinned_upload``), converted, resized and normalised there in
        one pass, and scored by ``inference_network`` (the eval-mode fast copy of ``network``).
        """
        if len(images) == 0:
            raise ValueError("empty image batch: no images to score")
        dtype = self.dtype  # the autocast dtype (float32 for fp32 and int8)

        def score(part):
            return torch.sigmoid(self.inference_network(self.preprocess_images(part, dtype)).float())
        with torch.inference_mode(), self._autocast():
            return score_in_chunks(images, int(self.cfg.inference_batch_size), score, self.uploader)

