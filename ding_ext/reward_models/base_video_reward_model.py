"""``BaseVideoRewardModel``: reward models that judge a clip of frames, and ``ResNetVideoRewardModel`` (``resnet_video``).

A single frame cannot show whether the robot is still moving; tasks whose success needs a still robot (PickCube:
"robot static") are judged from a short clip. A clip arrives as one filmstrip image (``ding_ext.video_frames``: the
env's ``reward_frames`` frames side by side, oldest first), so collection, datasets, the trainer and the fidelity
report handle clips as they handle frames. The model picks ``num_frames`` of the clip's ``clip_length`` frames
(``sample_frames``), preprocesses each like a single image (crop, resize, normalise) and stacks them on channels.
"""
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from ding.utils import REWARD_MODEL_REGISTRY

from ..image_utils import preprocess_images, to_nchw
from ..joint_speed_gate import JOINT_SPEED_KEYS, joint_speed
from ..observations import batch_size
from ..transitions import lookup
from ..motion_gate import MOTION_KEYS, last_frame_motion
from ..networks import FUSIONS, ResNetClassifier
from ..video_frames import FRAME_SAMPLING, frame_indices, sample_frames, split_filmstrip
from .base_image_reward_model import BaseImageRewardModel
from .resnet_reward_model import ResNetRewardModel

DEFAULT_PROMPT = "{task} Has the task been completed successfully? Answer yes or no."


class BaseVideoRewardModel(BaseImageRewardModel):
    """A reward model over clips; subclasses build a network taking [B, 3 * num_frames, H, W]."""

    video_config = dict(
        # (int) Frames in each incoming clip (the env's ``reward_frames``): a clip is one image of clip_length
        # frames side by side, each image_size after the resize.
        clip_length=2,
        # (int) Frames of each clip the network looks at (<= clip_length).
        num_frames=2,
        # (str) Which frames: uniform (evenly spaced, the last included) | last (the newest num_frames) | random
        # (random earlier frames plus the last, drawn anew for every training batch; scoring uses uniform).
        frame_sampling='uniform',
        # (str) Task text for prompt-based models (``format_prompt``); '{task}' in prompt_template is replaced by it.
        task_description='',
        # (str) Prompt template of ``format_prompt``.
        prompt_template=DEFAULT_PROMPT,
        # (float|str|None) Still-scene gate (``ding_ext.motion_gate``): a clip whose last two frames differ by more
        # than this (mean absolute pixel difference in [0, 1]) scores 0, for tasks whose success needs a still robot.
        # 'auto': the still_motion_threshold stored in the checkpoint (python -m ding_ext.motion_gate --store); when
        # training (ding_ext.train_reward_model, pretrain_reward), calibrated on the training data and stored.
        # None: no gate.
        still_motion_threshold=None,
        # (float) When training with still_motion_threshold='auto': the fraction of the data's success clips the
        # calibrated gate keeps (``ding_ext.motion_gate.calibrate_motion_threshold``).
        still_motion_keep=0.8,
        # (float|str|None) Joint-speed gate (``ding_ext.joint_speed_gate``): a clip whose robot moves faster than this
        # (the largest absolute joint velocity of its reward state, rad/s) scores 0. The reward state comes with the
        # images: observations['states'], or a transition's ``state_key``. 'auto': the still_joint_speed stored in the
        # checkpoint; when training, calibrated on the training data's sidecar, the classifier trained on the clips it
        # passes, and stored. None: no gate.
        still_joint_speed=None,
        # (float) When training with still_joint_speed='auto': the fraction of the data's success clips the gate keeps.
        still_joint_speed_keep=1.0,
        # (str) Where a transition holds its reward state (``ding_ext.transitions.lookup``): the env's frame_info
        # (the ManiSkill env with reward_state=True).
        state_key='frame_info.reward_state',
    )
    config = dict(BaseImageRewardModel.config, type='base_video', **video_config)

    def __init__(self, config: Any, device: str = 'cpu', tb_logger: Optional[Any] = None) -> None:
        super().__init__(config, device, tb_logger)
        self.motion_threshold  # still_motion_threshold='auto' without a stored threshold fails here
        self.joint_speed_threshold  # and still_joint_speed='auto' likewise

    def _validate_config(self) -> None:
        super()._validate_config()
        c = self.cfg
        if c.frame_sampling not in FRAME_SAMPLING:
            raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLING}, got {c.frame_sampling!r}")
        if not 1 <= int(c.num_frames) <= int(c.clip_length):
            raise ValueError(f"num_frames must lie in [1, clip_length={c.clip_length}], got {c.num_frames}")
        if int(c.image_size[0]) != 3:
            raise ValueError(f"image_size is one frame's [3, H, W], got {c.image_size!r}")
        t = c.still_motion_threshold
        if t is not None and t != 'auto' and not (isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0):
            raise ValueError(f"still_motion_threshold must be None, 'auto' or a number >= 0, got {t!r}")
        if not 0.0 < float(c.still_motion_keep) <= 1.0:
            raise ValueError(f"still_motion_keep must lie in (0, 1], got {c.still_motion_keep!r}")
        j = c.still_joint_speed
        if j is not None and j != 'auto' and not (isinstance(j, (int, float)) and not isinstance(j, bool) and j >= 0):
            raise ValueError(f"still_joint_speed must be None, 'auto' or a number >= 0 (rad/s), got {j!r}")
        if not 0.0 < float(c.still_joint_speed_keep) <= 1.0:
            raise ValueError(f"still_joint_speed_keep must lie in (0, 1], got {c.still_joint_speed_keep!r}")
        if t is not None and int(c.clip_length) < 2:
            raise ValueError("still_motion_threshold compares the last two frames of a clip: it needs clip_length >= 2, "
                             f"got {c.clip_length}")

    def _gate_setting(self, key: str, how_to_store: str) -> Optional[float]:
        """A gate's threshold from config ``key``: None (no gate), a number, or 'auto': the one stored under ``key``
        in the loaded checkpoint (an error naming ``how_to_store`` when it has none)."""
        t = self.cfg[key]
        if t != 'auto':
            return None if t is None else float(t)
        value = self.loaded_metadata.get(key)
        if value is None:
            raise ValueError(f"{key}='auto' needs a checkpoint with a stored {key}, but "
                             f"{self.cfg.checkpoint_path or 'no checkpoint'} has none; {how_to_store}, or set a number")
        return float(value)

    @property
    def motion_threshold(self) -> Optional[float]:
        """The still-scene gate's threshold (None: no gate); 'auto' reads it from the loaded checkpoint."""
        return self._gate_setting('still_motion_threshold', "run `python -m ding_ext.motion_gate --checkpoint CKPT "
                                  "--data DIR --store` on labelled clips")

    @property
    def joint_speed_threshold(self) -> Optional[float]:
        """The joint-speed gate's threshold in rad/s (None: no gate); 'auto' reads it from the loaded checkpoint."""
        return self._gate_setting('still_joint_speed', "train with still_joint_speed='auto', run `python -m "
                                  "ding_ext.joint_speed_gate --data DIR --checkpoint CKPT --store`")

    @property
    def needs_states(self) -> bool:
        """True when scoring needs the robot's joint velocities with the images (the joint-speed gate is on)."""
        return self.joint_speed_threshold is not None

    def joint_speeds(self, states: Any, n: int) -> Optional[torch.Tensor]:
        """The largest joint speed of each of the ``n`` clips' states for the joint-speed gate (None without a gate;
        an error naming what is wrong with ``states``): computed before scoring, so a bad state costs no forward
        pass."""
        return joint_speed(states, n) if self.needs_states else None

    def gate_joint_speed(self, speeds: Optional[torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
        """``probs``, 0 where ``speeds`` (``joint_speeds``) exceed the gate (unchanged without a gate)."""
        if speeds is None:
            return probs
        return torch.where(speeds <= self.joint_speed_threshold, probs, torch.zeros_like(probs))

    def collect_data(self, data: List[Dict[str, Any]]) -> None:
        """As for single frames; with the joint-speed gate, only the clips it passes are kept (the classifier learns
        what the gated reward scores: a moving robot scores 0 whatever the image shows)."""
        if self.cfg.cooptrain_reward and self.needs_states:
            tau = self.joint_speed_threshold
            data = [t for i, t in enumerate(data) if lookup(t, self.cfg.image_key) is None
                    or float(joint_speed([self._state_of(t, i)], 1)[0]) <= tau]
        super().collect_data(data)

    def gate_still(self, images: Any, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` of the clips ``images``, 0 where the still-scene gate sees motion (unchanged without a gate)."""
        tau = self.motion_threshold
        if tau is None:
            return probs
        return torch.where(last_frame_motion(images, int(self.cfg.clip_length)) <= tau, probs, torch.zeros_like(probs))

    def predict_proba(self, images: Any, *, states: Any = None) -> torch.Tensor:
        """Success probability per clip; with the still-scene gate, 0 where the last two frames show motion; with the
        joint-speed gate, 0 where ``states`` (one row of joint velocities per clip) show a moving robot."""
        speeds = self.joint_speeds(states, batch_size(images))
        return self.gate_joint_speed(speeds, self.gate_still(images, super().predict_proba(images)))

    def checkpoint_metadata(self) -> Dict[str, Any]:
        """The base metadata plus the still-scene threshold: the configured one, else the loaded checkpoint's (it
        describes the camera's pixels, not the weights, so it stays valid when the weights train on)."""
        meta = super().checkpoint_metadata()
        meta.update({k: self.loaded_metadata[k] for k in MOTION_KEYS + JOINT_SPEED_KEYS if k in self.loaded_metadata})
        if self.cfg.still_joint_speed not in (None, 'auto'):
            meta['still_joint_speed'] = float(self.cfg.still_joint_speed)
        if self.cfg.still_motion_threshold not in (None, 'auto'):  # a configured gate goes with the weights it scored
            meta['still_motion_threshold'] = float(self.cfg.still_motion_threshold)
        return meta

    def network_metadata(self) -> Dict[str, Any]:
        meta = super().network_metadata()
        meta.update(clip_length=int(self.cfg.clip_length), num_frames=int(self.cfg.num_frames),
                    frame_sampling=self.cfg.frame_sampling)
        return meta

    def sample_frames(self, images: Any, strategy: Optional[str] = None, k: Optional[int] = None,
                      generator: Optional[torch.Generator] = None) -> Any:
        """``ding_ext.video_frames.sample_frames`` with this model's strategy and k as defaults."""
        return sample_frames(images, strategy or self.cfg.frame_sampling, int(k or self.cfg.num_frames), generator)

    def _frame_indices(self) -> torch.Tensor:
        strategy = self.cfg.frame_sampling
        if strategy == 'random' and not self.network.training:
            strategy = 'uniform'  # scoring is deterministic
        return frame_indices(int(self.cfg.clip_length), int(self.cfg.num_frames), strategy)

    def preprocess_video(self, images: Any) -> torch.Tensor:
        """Filmstrip clips (any layout/dtype ``preprocess_images`` accepts, or [B, T, H, W, C] / [B, T, C, H, W]
        arrays) -> float [B, num_frames, 3, H, W] on the model's device, each frame cropped, resized and normalised."""
        x = to_nchw(images, channels=3) if not _is_clip_batch(images) else _clip_batch_to_strip(images)
        clips = split_filmstrip(x, int(self.cfg.clip_length))
        clips = clips.index_select(1, self._frame_indices())
        b, k = clips.shape[:2]
        frames = preprocess_images(
            clips.reshape(b * k, *clips.shape[2:]), self.cfg.image_size, self.cfg.normalize, self.device,
            torch.float32, crop=self.cfg.image_crop, antialias=bool(self.cfg.resize_antialias))
        return frames.reshape(b, k, *frames.shape[1:])

    def preprocess_images(self, images: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The network's input: the sampled frames of each clip stacked on channels, [B, 3 * num_frames, H, W]."""
        x = self.preprocess_video(images)
        x = x.reshape(x.shape[0], -1, *x.shape[3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(dtype)

    def format_prompt(self, task_description: Optional[str] = None) -> str:
        """The question a prompt-based model answers about a clip."""
        task = (task_description if task_description is not None else self.cfg.task_description).strip()
        return self.cfg.prompt_template.replace('{task}', task).strip()


def _is_clip_batch(images: Any) -> bool:
    return (torch.is_tensor(images) or hasattr(images, 'ndim')) and getattr(images, 'ndim', 0) == 5


def _clip_batch_to_strip(images: Any) -> torch.Tensor:
    """[B, T, H, W, C] or [B, T, C, H, W] -> NCHW filmstrips [B, C, H, T*W]."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] == 3 and x.shape[2] != 3:
        x = x.permute(0, 1, 4, 2, 3)
    if x.shape[2] != 3:
        raise ValueError(f"a clip batch must be [B, T, H, W, 3] or [B, T, 3, H, W], got {tuple(x.shape)}")
    b, t, c, h, w = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, c, h, t * w)


@REWARD_MODEL_REGISTRY.register('resnet_video')
class ResNetVideoRewardModel(BaseVideoRewardModel, ResNetRewardModel):
    """ResNet success classifier over clips (see ``BaseVideoRewardModel``); ``fusion`` picks where the frames meet."""

    config = dict(
        ResNetRewardModel.config,
        **BaseVideoRewardModel.video_config,
        type='resnet_video',
        # (str) early: the frames stacked on the first convolution's channels (sees pixel-level motion); late: one
        # shared trunk per frame, the head sees all frames' features; motion: the first convolution sees the last
        # frame and the scaled differences between consecutive frames (sub-pixel motion made explicit).
        fusion='early',
    )

    def _validate_config(self) -> None:
        super()._validate_config()
        if self.cfg.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.cfg.fusion!r}")

    def build_network(self) -> nn.Module:
        c = self.cfg
        return ResNetClassifier(c.arch, c.hidden_dim, c.dropout, c.pretrained, frames=int(c.num_frames),
                                fusion=c.fusion)

    def network_metadata(self) -> Dict[str, Any]:
        meta = super().network_metadata()
        meta.update(fusion=self.cfg.fusion)
        return meta
