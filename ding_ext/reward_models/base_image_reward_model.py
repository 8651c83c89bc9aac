"""``BaseImageRewardModel``: the DI-engine reward-model contract for image success classifiers.

Subclasses provide ``build_network()`` (a module mapping a float NCHW batch to one logit per image)
and ``network_metadata()``; this class does the rest: label collection, class-balanced BCE
training, fast batched scoring (``ding_ext.inference_network``), checkpoints, debug images; reward
estimation in every ``reward_mode`` x ``combine_mode`` comes from ``TransitionRewards``.
"""
import copy
import logging
import os
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from ding.reward_model.base_reward_model import BaseRewardModel
from easydict import EasyDict

from ..checkpoint_io import check_metadata, load_checkpoint, save_checkpoint
from ..chunked_scoring import resolve_pinned_upload
from ..debug_images import DebugImageWriter, debug_dir_from
from ..evaluation import CALIBRATION_KEYS
from ..image_utils import check_crop, random_shift
from ..inference_network import check_compile_mode, resolve_channels_last, resolve_space_to_depth_stem
from ..precision import CHOICES as PRECISION_CHOICES, PRECISIONS, resolve_precision
from ..transitions import labelled_images
from .image_scoring import SCORING_CONFIG, ImageScoring
from .reward_model_api import RewardModelAPI
from .transition_rewards import TransitionRewards

logger = logging.getLogger(__name__)

REWARD_MODES = ("per_step", "terminal")
COMBINE_MODES = ("replace", "add", "weighted")
SOFT_REWARD_CHOICES = (False, True, "above_threshold")


class BaseImageRewardModel(ImageScoring, RewardModelAPI, TransitionRewards, BaseRewardModel):
    """Image success classifier as a DI-engine reward model (see ``config`` for every key; the scoring keys are
    ``image_scoring.SCORING_CONFIG``)."""

    config = dict(
        # (str) Registry name used by ``create_reward_model``.
        type='base_image',
        # (list) Network input [C, H, W]; incoming images of any size are resized to H x W.
        image_size=[3, 128, 128],
        # (list|None) [top, left, height, width] fractions of each incoming image cut out before the resize to
        # image_size (spend the network's pixels on the workspace); None = the whole image.
        image_crop=None,
        # (bool) Normalise with ImageNet mean/std (keep true with ImageNet-pretrained weights).
        normalize=True,
        # (bool) Low-pass filter images the resize to image_size shrinks; false: plain bilinear, as RLinf resizes
        # (set for its checkpoints by ding_ext.rlinf_migration). Stored in and checked against checkpoints.
        resize_antialias=True,
        **SCORING_CONFIG,
        # (str) per_step: score every transition; terminal: score transitions with done=True, r=0 elsewhere.
        reward_mode='terminal',
        # (float) Model reward when the success probability is above the threshold (``reward_threshold``).
        success_reward=1.0,
        # (float) Model reward otherwise.
        fail_reward=0.0,
        # (float|str) Probability threshold: success when p > threshold. 'auto': the calibrated_threshold stored
        # in the checkpoint's metadata by `python -m ding_ext.evaluate_reward_model --checkpoint CKPT --data DIR
        # --store-threshold` (the lowest threshold reaching a target precision on held-out data).
        reward_threshold=0.5,
        # (bool|str) true: the success probability p itself is the model reward (no threshold); 'above_threshold':
        # p where p > threshold, else 0 (RLinf's reward_threshold); false: success/fail_reward by threshold.
        use_soft_reward=False,
        # (str) replace: w*r; add: env + w*r; weighted: env_reward_weight*env + w*r (w = reward_weight).
        combine_mode='replace',
        # (float) Weight w of the model reward (``scale_reward``; RLinf's ``alpha``).
        reward_weight=1.0,
        # (float) Weight of the env reward in ``weighted`` mode.
        env_reward_weight=1.0,
        # (str|None) Checkpoint to load at start (.safetensors with metadata, or .pt state dict).
        checkpoint_path=None,
        # (str|None) Save every scored image under resnet_success/ or resnet_fail/; env var DEBUG_IMAGE_SAVE_DIR also sets it.
        debug_save_dir=None,
        # (float) Adam learning rate of ``train()``.
        learning_rate=1e-4,
        # (float) Adam weight decay.
        weight_decay=0.0,
        # (int) Mini-batch size of ``train()``; half success, half failure images.
        batch_size=64,
        # (int) Training augmentation: random shift of each image by up to this many pixels (0 = off).
        augment_shift=4,
        # (int) BCE steps per ``train()`` call that trains.
        update_per_collect=10,
        # (int) ``train()`` trains on every train_interval-th call only (the calls between add data, nothing else).
        # With score_once a co-trained model's stored probabilities then stay valid for train_interval collect
        # iterations: the replay buffer is scored again once per train_interval iterations, not after every one.
        train_interval=1,
        # (int) ``clear_data(iter)`` empties the buffer when iter % clear_buffer_per_iters == 0.
        clear_buffer_per_iters=100,
        # (int) New transitions the DI-engine pipelines collect before each train(); kept at 1 (one collect call).
        target_new_data_count=1,
        # (int) Most (image, label) pairs kept per class; the oldest are dropped first.
        max_buffer_size=20000,
        # (bool) ``estimate()`` stores each transition's success probability with it (``reward_score``) and reuses
        # it while the weights are unchanged: a frozen model scores each stored image once, a co-trained one again
        # after it trained. False: every call scores its images (DI-engine's reward models do so).
        score_once=True,
        # (str) Where a transition holds the reward image: a key, or a dotted path such as 'next_obs.image'.
        image_key='reward_image',
        # (str) Where a transition holds the env's success flag (the training label); also looked up in info.
        success_key='success',
        # (bool) Collect labelled images and train during RL. False = frozen model: collect_data and train do nothing.
        cooptrain_reward=True,
        # (str|None) success/ + failure/ PNG folders loaded once into the co-training buffer as a warm start
        # (e.g. scripted successful episodes); kept by clear_data.
        cooptrain_seed_data_dir=None,
        # (bool) Train on ``pretrain_data_dir`` when the model is built, unless checkpoint_path already exists.
        pretrain_reward=False,
        # (str|None) success/ + failure/ PNG folders for pretraining (stage 1's save_dir, or processed robot data).
        pretrain_data_dir=None,
        # (dict) Trainer options for pretraining (see ding_ext.train_reward_model.TRAIN_OPTIONS).
        pretrain=dict(epochs=20, batch_size=64, val_split=0.1, early_stopping_patience=5, seed=0),
        # (float) Reward-hacking alarm: warn (and log reward_model/hacking_alarm) when the learned reward's online
        # precision against env success stays below this for ``alarm_patience`` iterations (entry.reward_monitor).
        precision_alarm=0.8,
        # (int) Consecutive iterations below ``precision_alarm`` that raise the alarm.
        alarm_patience=5,
        # (bool) Stop the RL run when the alarm is raised.
        stop_on_alarm=False,
        # (str|None) Hard-negative mining: frames the learned reward calls success while the env says failure are
        # written to <dir>/failure/ (with sidecar rows) during RL, for the next training round; e.g. stage 1's folder.
        hard_negative_dir=None,
        # (dict) Extra metadata stored in checkpoints and checked against them (e.g. the env's control_mode).
        env_metadata={},
        # (str) Where ``save()`` writes when no path is given.
        exp_name='reward_model_exp',
    )

    needs_checkpoint = True  # a frozen model needs checkpoint_path (false where build_network loads the weights)

    def __init__(self, config: EasyDict, device: str = 'cpu', tb_logger: Optional[Any] = None) -> None:
        super().__init__()
        cfg = self.default_config()
        cfg.update(copy.deepcopy(dict(config)))
        self.cfg = EasyDict(cfg)
        self._validate_config()
        self.device = torch.device(device)
        self.tb_logger = tb_logger
        precision, reason = resolve_precision(self.cfg.precision, self.device)
        self.precision_choice = dict(precision=precision, reason=reason)
        if self.cfg.precision == 'auto':
            logger.info("reward model precision 'auto' chose %s on %s: %s", precision, self.device, reason)
        self.dtype = PRECISIONS[precision]
        self.network = self.build_network()
        self.to_device(self.device)
        self._instance = uuid.uuid4().hex  # versions of stored probabilities name the model that gave them
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16 and self.device.type == 'cuda')
        self.success_images: List[np.ndarray] = []
        self.failure_images: List[np.ndarray] = []
        self.seed_success_images: List[np.ndarray] = []
        self.seed_failure_images: List[np.ndarray] = []
        self.train_iter = 0
        self.train_calls = 0  # train() calls, trained or not (train_interval)
        if not (isinstance(self.cfg.train_interval, int) and self.cfg.train_interval >= 1):
            raise ValueError(f"reward_model.train_interval must be a positive integer, got {self.cfg.train_interval!r}")
        self.loaded_metadata: Dict[str, Any] = {}
        self._calibration: Dict[str, Any] = {}  # calibration of the loaded weights, until they are trained
        self._one_class_warned = False
        if self.cfg.cooptrain_reward and self.cfg.cooptrain_seed_data_dir:
            self._load_seed_images(self.cfg.cooptrain_seed_data_dir)
        self.pretrain_result: Optional[Dict[str, Any]] = None
        if self.cfg.checkpoint_path and os.path.isfile(self.cfg.checkpoint_path):
            self.load(self.cfg.checkpoint_path)
        elif self.cfg.pretrain_reward:
            self.pretrain_result = self.pretrain()
        elif self.cfg.checkpoint_path:
            if not self.cfg.cooptrain_reward:
                raise FileNotFoundError(
                    f"reward_model.checkpoint_path {self.cfg.checkpoint_path} does not exist, and the model is frozen "
                    "(cooptrain_reward and pretrain_reward are false); train one first (python -m "
                    "ding_ext.train_reward_model) or enable cooptrain_reward/pretrain_reward"
                )
        elif not self.cfg.cooptrain_reward and self.needs_checkpoint:
            raise ValueError(
                "a frozen reward model (cooptrain_reward and pretrain_reward false) needs checkpoint_path"
            )
        threshold = self.threshold  # reward_threshold='auto' without a calibrated checkpoint fails here
        dbg = debug_dir_from(self.cfg.debug_save_dir)
        self.debug_writer = DebugImageWriter(dbg, threshold) if dbg else None

    def _load_seed_images(self, data_dir: str) -> None:
        from ..image_folder_dataset import scan_image_folder
        scan = scan_image_folder(data_dir)
        for image, label in zip(scan.images, scan.labels):
            (self.seed_success_images if label else self.seed_failure_images).append(image)
        logger.info("co-training warm start: %d success and %d failure images from %s",
                    len(self.seed_success_images), len(self.seed_failure_images), data_dir)

    def pretrain(self) -> Dict[str, Any]:
        """Train on ``pretrain_data_dir`` with the stage-2 trainer, load the best weights, and copy them to
        ``checkpoint_path`` when one is configured (so the next run loads instead of training again)."""
        from ..train_reward_model import train_reward_model
        data_dir = self.cfg.pretrain_data_dir
        if not data_dir:
            raise ValueError("reward_model.pretrain_reward is true but reward_model.pretrain_data_dir is not set")
        model_keys = set(self.default_config()) - {'checkpoint_path', 'pretrain_reward', 'pretrain', 'pretrain_data_dir',
                                                   'cfg_type', 'exp_name', 'debug_save_dir', 'import_names'}
        overrides = {f'model.{k}': copy.deepcopy(v) for k, v in self.cfg.items() if k in model_keys}
        options = dict(self.cfg.pretrain or {})
        options.setdefault('save_dir', os.path.join(self.cfg.exp_name, 'reward_model', 'pretrain'))
        options.setdefault('device', str(self.device))
        logger.info("pretraining the reward model on %s", data_dir)
        result = train_reward_model(data_dir, **options, **overrides)
        self.load(result['best_path'])
        if self.cfg.checkpoint_path:
            self.save(self.cfg.checkpoint_path)
        return result

    # ------------------------------------------------------------------ to be provided by subclasses
    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def network_metadata(self) -> Dict[str, Any]:
        """Fields that must agree between a checkpoint and the config."""
        crop = None if self.cfg.image_crop is None else [float(v) for v in self.cfg.image_crop]
        return dict(type=self.cfg.type, image_size=list(self.cfg.image_size), normalize=bool(self.cfg.normalize),
                    image_crop=crop, resize_antialias=bool(self.cfg.resize_antialias))

    # ------------------------------------------------------------------ config
    def _validate_config(self) -> None:
        c = self.cfg
        if c.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {c.reward_mode!r}")
        if c.combine_mode not in COMBINE_MODES:
            raise ValueError(f"combine_mode must be one of {COMBINE_MODES}, got {c.combine_mode!r}")
        if c.use_soft_reward not in SOFT_REWARD_CHOICES:
            raise ValueError(f"use_soft_reward must be one of {SOFT_REWARD_CHOICES}, got {c.use_soft_reward!r}")
        if c.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {c.precision!r}")
        if c.precision == 'int8':
            if c.cooptrain_reward:
                raise ValueError("precision 'int8' scores a frozen model (its copy is calibrated once): set "
                                 "cooptrain_reward false, or use fp32/auto for co-training")
            if not c.int8_calibration_data:
                raise ValueError("precision 'int8' needs int8_calibration_data: a success/ + failure/ folder of the "
                                 "images the model scores, to calibrate the int8 copy and check it against fp32")
            if c.compile:
                raise ValueError("precision 'int8' and compile exclude each other: the int8 copy is not compiled")
        check_crop(c.image_crop)
        if len(c.image_size) != 3:
            raise ValueError(f"image_size must be [C, H, W], got {c.image_size!r}")
        t = c.reward_threshold
        if t != 'auto' and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0):
            raise ValueError(f"reward_threshold must be a number in [0, 1] or 'auto', got {t!r}")
        resolve_channels_last(c.channels_last, 'cpu')
        resolve_pinned_upload(c.pinned_upload, 'cuda')
        resolve_space_to_depth_stem(c.space_to_depth_stem, 'cpu')
        check_compile_mode(c.compile_mode)
        if int(c.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2 (half success, half failure), got {c.batch_size}")

    @property
    def threshold(self) -> float:
        """The effective success threshold: ``reward_threshold``, or with 'auto' the ``calibrated_threshold``
        of the loaded checkpoint's metadata (ValueError when it has none)."""
        if self.cfg.reward_threshold != 'auto':
            return float(self.cfg.reward_threshold)
        value = self.loaded_metadata.get('calibrated_threshold')
        if value is None:
            ckpt = self.cfg.checkpoint_path
            if ckpt and os.path.isfile(ckpt):
                where = f"checkpoint {ckpt} has no calibrated_threshold in its metadata"
            elif ckpt:
                where = f"checkpoint_path {ckpt} does not exist"
            else:
                where = "no checkpoint is loaded (checkpoint_path is not set)"
            raise ValueError(
                f"reward_threshold='auto' needs a checkpoint calibrated on held-out data, but {where}; run "
                f"`python -m ding_ext.evaluate_reward_model --checkpoint {ckpt or 'CKPT'} --data DIR --store-threshold` "
                "(or train with store_threshold=true), or set a numeric reward_threshold"
            )
        return float(value)

    # ---------------------------------------------------- DI-engine contract (estimate() is TransitionRewards')
    def collect_data(self, data: List[Dict[str, Any]]) -> None:
        """Keep (image, label) pairs from transitions that carry an image; label = the env's success flag."""
        if not self.cfg.cooptrain_reward:
            return
        self.add_labelled_images(*labelled_images(data, self.cfg.image_key, self.cfg.success_key))

    def add_labelled_images(self, images: Sequence[Any], labels: Sequence[bool]) -> None:
        """Add images (HWC uint8 preferred) with boolean labels to the training buffer."""
        cap = int(self.cfg.max_buffer_size)
        for image, label in zip(images, labels):
            arr = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            (self.success_images if label else self.failure_images).append(arr)
        for buf in (self.success_images, self.failure_images):
            if len(buf) > cap:
                del buf[:len(buf) - cap]

    def clear_data(self, iter: Optional[int] = None) -> None:
        """Empty the buffer (not the warm-start images); with ``iter`` given, only when iter % clear_buffer_per_iters == 0."""
        if iter is not None and int(iter) % int(self.cfg.clear_buffer_per_iters) != 0:
            return
        self.success_images.clear()
        self.failure_images.clear()

    def train(self, data: Any = None) -> Optional[Dict[str, float]]:
        """``update_per_collect`` BCE steps on class-balanced mini-batches from the buffer, on every
        ``train_interval``-th call.

        Does nothing for a frozen model, on the calls between, or while one class has no images yet.
        """
        if not self.cfg.cooptrain_reward:
            return None
        self.train_calls += 1
        if self.train_calls % int(self.cfg.train_interval) != 0:
            return None
        pos = self.seed_success_images + self.success_images
        neg = self.seed_failure_images + self.failure_images
        if not pos or not neg:
            if not self._one_class_warned:
                logger.info(
                    "reward model not trained yet: buffer has %d success and %d failure images (needs both)",
                    len(pos), len(neg)
                )
                self._one_class_warned = True
            return None
        half = int(self.cfg.batch_size) // 2
        stats = {}
        for _ in range(int(self.cfg.update_per_collect)):
            si = np.random.randint(len(pos), size=half)
            fi = np.random.randint(len(neg), size=half)
            images = [pos[i] for i in si] + [neg[i] for i in fi]
            labels = torch.cat([torch.ones(half), torch.zeros(half)])
            stats = self.train_step(images, labels)
        return stats

    def train_step(self, images: Any, labels: torch.Tensor, pos_weight: Optional[float] = None) -> Dict[str, float]:
        """One optimiser step of BCE on a batch; logs loss and accuracy to tb_logger."""
        self.network.train()
        self._calibration = {}  # the weights change: a stored calibration no longer describes them
        x = random_shift(self.preprocess_images(images), int(self.cfg.augment_shift))
        y = torch.as_tensor(labels, dtype=torch.float32, device=self.device).reshape(-1)
        with self._autocast():
            logits = self.network(x).float()
        pw = None if pos_weight is None else torch.tensor(pos_weight, device=self.device)
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        acc = ((logits.detach() > 0).float() == y).float().mean().item()
        stats = {'reward_loss': loss.item(), 'accuracy': acc}
        if self.tb_logger is not None:
            for k, v in stats.items():
                self.tb_logger.add_scalar(f'reward_model/{k}', v, self.train_iter)
        self.train_iter += 1
        return stats

    # ------------------------------------------------------------------ checkpoints
    def metadata(self) -> Dict[str, Any]:
        meta = self.network_metadata()
        env_meta = dict(self.cfg.env_metadata or {})
        clash = sorted(set(meta) & set(env_meta))
        if clash:
            raise ValueError(f"env_metadata keys {clash} clash with the network's metadata fields; rename them "
                             f"(e.g. 'env_{clash[0]}')")
        meta.update(env_meta)
        return meta

    def checkpoint_metadata(self) -> Dict[str, Any]:
        """``metadata()`` plus the loaded checkpoint's calibration (``CALIBRATION_KEYS``) while the weights are
        still the loaded ones (always for a frozen model; a trained model drops it, as it would be stale)."""
        meta = self.metadata()
        meta.update(self._calibration)
        return meta

    def state_dict(self) -> Dict[str, Any]:
        return {'model': self.network.state_dict(), 'metadata': self.checkpoint_metadata(),
                'train_iter': self.train_iter}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        weights = state['model'] if 'model' in state else state
        self._load_weights(weights, state.get('metadata', {}), source='state dict')

    def save(self, path: Optional[str] = None, name: str = 'best') -> str:
        """Write ``<path>/reward_model/<name>_model.safetensors`` (DI-engine's pipelines call save(path, name))."""
        if path is None:
            path = self.cfg.exp_name
        file = path if path.endswith(('.safetensors', '.pt', '.pth')) else \
            os.path.join(path, 'reward_model', f'{name}_model.safetensors')
        return save_checkpoint(file, self.network.state_dict(), self.checkpoint_metadata())

    def load(self, path: str) -> Dict[str, Any]:
        """Load weights from a checkpoint, checking its metadata against this config."""
        weights, meta = load_checkpoint(path)
        self._load_weights(weights, meta, source=f"checkpoint {path}")
        return meta

    def checkpoint_weights(self, weights: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """The network's state dict from a checkpoint's tensors; subclasses map other layouts (e.g. RLinf's)."""
        return dict(weights)

    def describe_weights(self, weights: Mapping[str, torch.Tensor]) -> str:
        """What the network settings of ``weights`` look like, for error messages ('' when unknown)."""
        return ''

    def _load_weights(self, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: str) -> None:
        if not meta:
            logger.warning("%s has no metadata (a plain state dict, e.g. saved by RLinf): its settings are taken from "
                           "the config unchecked: %s", source, self.metadata())
        check_metadata(meta, self.metadata(), source=source)
        weights = self.checkpoint_weights(weights, source)
        try:
            self.network.load_state_dict(weights)
        except RuntimeError as e:
            hint = self.describe_weights(weights)
            hint = f"; {hint}" if hint else ""
            raise ValueError(f"{source} does not fit the configured network{hint}: {e}") from e
        self.loaded_metadata = dict(meta)
        self._calibration = {k: meta[k] for k in CALIBRATION_KEYS if k in meta}

    def flush_debug_images(self) -> None:
        if self.debug_writer is not None:
            self.debug_writer.flush()
