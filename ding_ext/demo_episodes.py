"""Recorded demonstration episodes on disk, and the demo buffer that RLPD samples half of each batch from.

A demo folder holds one ``episode_<name>.npz`` per episode and a ``metadata.json`` with the env settings
that produced them (control mode, reward camera, image size, ...), checked against the env that
trains on them. Each episode file has, for T steps:

- ``obs`` (T, D) float32, ``next_obs`` (T, D), ``action`` (T, A), ``reward`` (T,) the env's reward,
  ``done`` (T,) bool, ``success`` (T,) bool (the env's success flag after the step);
- optionally ``image`` (K, H, W, 3) uint8 with ``image_step`` (K,) int: the reward-camera frames after
  steps ``image_step`` (every step for a per-step learned reward, the last one for a terminal reward);
- optionally ``reward_state`` (K, J) float32 with ``image``: the robot's joint velocities at each of those frames
  (envs with ``reward_state``), which the transitions' ``frame_info`` carry for a clip model's joint-speed gate;
- optionally ``reset_image`` (H, W, 3) uint8: the frame of the reset observation. With it and a frame after every
  step, the episode also gives image observations (``load_demo_transitions(obs_image=True)``): the image of obs
  ``t`` is the frame after step ``t - 1`` (the reset frame for ``t = 0``), that of ``next_obs`` ``t`` the frame after
  step ``t``, resized to the policy's image size with the Franka env's resize (``ding_ext.image_utils.resize_rgb``).
  Episodes without it load with flat observations only.

Episode files are written atomically (a crash leaves whole episodes only), so a recording can be
resumed: names already present are skipped. Sources: ManiSkill motion-planner episodes converted to
the training control mode (``dizoo_maniskill.record_demos``), teleoperated robot episodes.
"""
import glob
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .checkpoint_io import atomic_write, check_metadata, write_json_atomic
from .image_folder_dataset import METADATA_FILE, read_metadata
from .image_utils import resize_rgb
from .transitions import FRAME_INFO_KEY, IMAGE_KEY, REWARD_STATE_KEY, strip_images

REQUIRED_KEYS = ('obs', 'next_obs', 'action', 'reward', 'done', 'success')


def episode_path(demo_dir: str, name: str) -> str:
    return os.path.join(demo_dir, f'episode_{name}.npz')


def write_episode(demo_dir: str, name: str, episode: Mapping[str, Any]) -> str:
    """Write one episode atomically; ``episode`` has the arrays of the module docstring."""
    missing = [k for k in REQUIRED_KEYS if k not in episode]
    if missing:
        raise ValueError(f"demo episode {name!r} lacks {missing}; needs {list(REQUIRED_KEYS)}")
    arrays = {k: np.asarray(v) for k, v in episode.items()}
    lengths = {k: len(arrays[k]) for k in REQUIRED_KEYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"demo episode {name!r}: arrays of different lengths {lengths}")
    if ('image' in arrays) != ('image_step' in arrays):
        raise ValueError(f"demo episode {name!r}: 'image' and 'image_step' go together")
    if 'reward_state' in arrays and ('image' not in arrays or len(arrays['reward_state']) != len(arrays['image'])):
        raise ValueError(f"demo episode {name!r}: 'reward_state' needs one row per 'image' frame")
    if 'reset_image' in arrays and ('image' not in arrays or arrays['reset_image'].shape != arrays['image'].shape[1:]):
        raise ValueError(f"demo episode {name!r}: 'reset_image' needs 'image' frames of the same shape")
    os.makedirs(demo_dir, exist_ok=True)
    path = episode_path(demo_dir, name)

    def _write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, _write)
    return path


def write_metadata(demo_dir: str, metadata: Mapping[str, Any]) -> None:
    """Record the env settings of a demo folder; an existing folder must agree with them."""
    path = os.path.join(demo_dir, METADATA_FILE)
    if os.path.isfile(path):
        check_metadata(read_metadata(demo_dir), dict(metadata), source=f"demo folder {demo_dir}")
        return
    os.makedirs(demo_dir, exist_ok=True)
    write_json_atomic(path, dict(metadata), sort_keys=True)


def episode_names(demo_dir: str) -> List[str]:
    return sorted(os.path.basename(p)[len('episode_'):-len('.npz')]
                  for p in glob.glob(os.path.join(demo_dir, 'episode_*.npz')))


def read_episode(path: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            episode = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / numpy errors do not name the file
        raise ValueError(f"demo episode {path} cannot be read ({type(e).__name__}: {e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in episode]
    if missing:
        raise ValueError(f"demo episode {path} lacks {missing}")
    return episode


def _tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def observation_images(episode: Mapping[str, np.ndarray], name: str,
                       image_size: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
    """The T + 1 observation images of an episode (reset frame, then the frame after each step) as CxHxW uint8
    tensors, resized to ``image_size`` [3, H, W] (None: as recorded)."""
    steps = len(episode['obs'])
    if 'reset_image' not in episode:
        raise ValueError(f"demo episode {name!r} has no 'reset_image' (recorded before reset frames were stored, or "
                         "without an image observation): it gives flat observations only; record it again, or load "
                         "the demos without obs_image")
    if 'image' not in episode or not np.array_equal(episode['image_step'], np.arange(steps)):
        raise ValueError(f"demo episode {name!r}: image observations need a frame after every step "
                         f"(image_step 0..{steps - 1})")
    frames = [episode['reset_image']] + list(episode['image'])
    if image_size is not None:
        if len(image_size) != 3 or int(image_size[0]) != 3:
            raise ValueError(f"demo observation image size must be [3, H, W], got {list(image_size)}")
        frames = [resize_rgb(f, int(image_size[1]), int(image_size[2])) for f in frames]
    return [torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))) for f in frames]


def episode_transitions(episode: Mapping[str, np.ndarray], name: str = '', obs_image: bool = False,
                        obs_image_size: Optional[Sequence[int]] = None) -> Iterator[Dict[str, Any]]:
    """DI-engine transitions (the keys an off-policy learner reads) with the reward image where one was recorded;
    with ``obs_image`` the observations are ``dict(state, image)`` (``observation_images``; ``next_obs`` of step t
    and ``obs`` of step t + 1 share their image)."""
    images, states = {}, {}
    if 'image' in episode:
        images = {int(s): img for s, img in zip(episode['image_step'], episode['image'])}
        if 'reward_state' in episode:
            states = {int(s): [float(v) for v in row] for s, row in zip(episode['image_step'], episode['reward_state'])}
    obs_images = observation_images(episode, name, obs_image_size) if obs_image else None
    for t in range(len(episode['obs'])):
        obs, next_obs = _tensor(episode['obs'][t]), _tensor(episode['next_obs'][t])
        if obs_images is not None:
            obs, next_obs = dict(state=obs, image=obs_images[t]), dict(state=next_obs, image=obs_images[t + 1])
        tr = dict(  # torch tensors, as DI-engine's collectors give them (the learner's collate stacks both sources)
            obs=obs, next_obs=next_obs, action=_tensor(episode['action'][t]),
            reward=_tensor([episode['reward'][t]]), done=bool(episode['done'][t]), success=bool(episode['success'][t]),
        )
        if t in images:
            tr[IMAGE_KEY] = images[t]
            tr[FRAME_INFO_KEY] = dict(episode_id=f'demo-{name}', step=t + 1, source='demo')
            if t in states:
                tr[FRAME_INFO_KEY][REWARD_STATE_KEY] = states[t]
        yield tr


def load_demo_transitions(demo_dir: str, expected_metadata: Optional[Mapping[str, Any]] = None,
                          max_episodes: Optional[int] = None, obs_image: bool = False,
                          obs_image_size: Optional[Sequence[int]] = None,
                          success_only: bool = False) -> List[Dict[str, Any]]:
    """Every transition of the folder's episodes (sorted by name), after checking its metadata against
    ``expected_metadata`` (keys the folder does not record are not checked); ``obs_image``: image observations, see
    ``episode_transitions``; ``success_only``: only the episodes that reach success (a folder that also holds the
    near misses a classifier needs)."""
    if not os.path.isdir(demo_dir):
        raise FileNotFoundError(f"demo folder not found: {demo_dir}")
    names = episode_names(demo_dir)[:max_episodes]
    if not names:
        raise FileNotFoundError(f"demo folder {demo_dir} holds no episode_*.npz files")
    meta = read_metadata(demo_dir)
    if expected_metadata:
        check_metadata(meta, {k: v for k, v in expected_metadata.items() if k in meta},
                       source=f"demo folder {demo_dir}")
    out: List[Dict[str, Any]] = []
    for name in names:
        episode = read_episode(episode_path(demo_dir, name))
        if success_only and not np.any(episode['success']):
            continue
        out += list(episode_transitions(episode, name, obs_image, obs_image_size))
    if not out:
        raise ValueError(f"no episode of {demo_dir} reaches success (demo_success_only): no demonstrations to use")
    return out


class DemoBuffer:
    """Demonstration transitions sampled uniformly; scored once by a reward model, or as recorded.

    Until ``rescore`` is called, ``sample`` returns the recorded transitions, reward images included (a reward
    model that scores sampled batches scores them; with its ``score_once`` each keeps its probability, so our
    entry leaves the demos unscored and lets the image reward model score them as they are sampled). ``rescore(reward_model)`` gives every transition the reward
    that model's ``estimate()`` gives it (per-step or terminal, combined with the env reward as its config says)
    and drops the images from what ``sample`` returns; ``rescore(None)`` keeps the env reward and drops the
    images. The recorded transitions are kept, so that a co-trained model can rescore them.
    """

    def __init__(self, transitions: List[Dict[str, Any]], seed: int = 0) -> None:
        if not transitions:
            raise ValueError("DemoBuffer needs at least one transition")
        self.raw = transitions
        self.scored: Optional[List[Dict[str, Any]]] = None
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.raw)

    def rescore(self, reward_model: Any = None) -> None:
        self.scored = strip_images(self.raw) if reward_model is None else reward_model.estimate(self.raw)

    def sample(self, n: int) -> List[Dict[str, Any]]:
        source = self.raw if self.scored is None else self.scored
        return [source[i] for i in self.rng.integers(len(source), size=int(n))]

    def success_fraction(self) -> float:
        return float(np.mean([bool(t['success']) for t in self.raw]))
