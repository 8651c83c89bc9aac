"""The labelled PNG folders written by the collection stage, as a torch ``Dataset``.

Layout::

    <data>/success/0001.png ...   label 1
    <data>/failure/0001.png ...   label 0
    <data>/metadata.json          optional: env settings (control_mode, reward_render_mode, ...)
    <data>/frames.jsonl           optional sidecar: one JSON row per PNG (see ``read_sidecar``)

File names are numbered; they are sorted numerically (``9999.png`` before ``10000.png``). Files
that cannot be decoded (truncated, not a PNG) are skipped and counted by ``scan_image_folder``.
The dataset yields ``(uint8 HxWx3 RGB array, float label)``; the float conversion, resize and
normalisation are left to the reward model's ``preprocess_images`` (the one preprocessing path).
"""
import hashlib
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from .png_writer import read_png

logger = logging.getLogger(__name__)

CLASS_DIRS = (("success", 1), ("failure", 0))
METADATA_FILE = "metadata.json"
SIDECAR_FILE = "frames.jsonl"
_NUMBER = re.compile(r"^(\d+)$")


class DataError(ValueError):
    """A problem with the image folders (missing, empty, unreadable or inconsistent data)."""


def numeric_sort_key(name: str) -> Tuple[int, int, str]:
    """Sort key: numbered files (``0001.png``, ``10000.png``) by number, then any other names by text."""
    stem = os.path.splitext(os.path.basename(name))[0]
    m = _NUMBER.match(stem)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def list_pngs(folder: str) -> List[str]:
    """Paths of the ``.png`` files in ``folder``, numerically sorted; hidden files (e.g. the ``.tmp-*``
    leftovers of an interrupted atomic write) are ignored."""
    names = [
        n for n in os.listdir(folder)
        if n.lower().endswith(".png") and not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=numeric_sort_key)]


def read_metadata(data_dir: str) -> Dict[str, Any]:
    """``<data>/metadata.json`` as a dict ({} when absent); an error when it is not a JSON object."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object of env settings, got {type(meta).__name__}")
    return meta


def read_sidecar(data_dir: str) -> Dict[str, Dict[str, Any]]:
    """``<data>/frames.jsonl`` as {relative PNG path: row}; {} when absent.

    One JSON object per line, appended (and flushed) by the writer after its PNG is on disk:
    ``file`` (``success/0001.png``), ``label`` (1 success / 0 failure), ``episode_id`` (str),
    ``step`` (int, within the episode), ``source`` (policy | planner | human | ...), and where the env
    offers them the facts behind the label (PickCube: ``cube_goal_dist``, ``robot_static``,
    ``is_grasped``, ``phase``). A line that does not parse (a write cut short by a crash) is skipped
    with a warning; a later row for the same file replaces an earlier one.
    """
    path = os.path.join(data_dir, SIDECAR_FILE)
    rows: Dict[str, Dict[str, Any]] = {}
    if not os.path.isfile(path):
        return rows
    bad = 0
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(row, dict) or not isinstance(row.get("file"), str):
                bad += 1
                continue
            rows[os.path.normpath(row["file"])] = row
    if bad:
        logger.warning("%s: skipped %d unreadable line(s)", path, bad)
    return rows


@dataclass
class ImageFolderScan:
    """Result of ``scan_image_folder``: the decodable files with labels, and what was skipped."""
    files: List[str]
    labels: np.ndarray  # int64, 1 = success, 0 = failure
    images: Optional[np.ndarray]  # N x H x W x 3 uint8 when cached, else None
    image_shape: Tuple[int, int, int]
    skipped_files: List[str] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)
    # sidecar row per file ({} for a file the sidecar does not list), aligned with ``files``
    frames: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def episode_ids(self) -> Optional[List[str]]:
        """Episode id per file (a file without one is its own episode); None when no file has one."""
        if not any(f.get("episode_id") is not None for f in self.frames):
            return None
        return [str(f["episode_id"]) if f.get("episode_id") is not None else "file:" + path
                for f, path in zip(self.frames, self.files)]

    @property
    def num_images(self) -> Dict[str, int]:
        return {name: int((self.labels == label).sum()) for name, label in CLASS_DIRS}


def _decode(path: str) -> Optional[np.ndarray]:
    try:
        img = read_png(path)
    except Exception:  # noqa: BLE001  (any decoder failure means: skip the file)
        return None
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        return None
    return img


def scan_image_folder(data_dir: str, cache: bool = True, num_threads: Optional[int] = None) -> ImageFolderScan:
    """Decode every PNG of ``success/`` and ``failure/`` once, to find the unreadable ones.

    ``cache`` keeps the decoded images in memory (one N x H x W x 3 uint8 array); otherwise the
    dataset decodes them again on access. Raises ``DataError`` naming the folder when a class
    folder is missing, empty, or has no readable image, and when images differ in size.
    """
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir} does not exist")
    files: List[str] = []
    labels: List[int] = []
    for name, label in CLASS_DIRS:
        folder = os.path.join(data_dir, name)
        if not os.path.isdir(folder):
            raise DataError(f"class folder {folder} is missing: expected <data>/success/*.png and <data>/failure/*.png")
        pngs = list_pngs(folder)
        if not pngs:
            raise DataError(f"class folder {folder} has no .png images: both classes are needed to train")
        files += pngs
        labels += [label] * len(pngs)

    threads = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # cv2 decodes without the GIL
        decoded = list(pool.map(_decode, files))

    ok = [i for i, img in enumerate(decoded) if img is not None]
    skipped = [files[i] for i, img in enumerate(decoded) if img is None]
    if skipped:
        logger.warning(
            "skipped %d unreadable or corrupt PNG file(s) in %s, e.g. %s",
            len(skipped), data_dir, ", ".join(os.path.relpath(p, data_dir) for p in skipped[:5])
        )
    kept_labels = np.asarray([labels[i] for i in ok], dtype=np.int64)
    for name, label in CLASS_DIRS:
        if not (kept_labels == label).any():
            raise DataError(
                f"class folder {os.path.join(data_dir, name)} has no readable image "
                f"(all its PNG files are corrupt or unreadable)"
            )
    shapes = Counter(decoded[i].shape for i in ok)
    if len(shapes) > 1:
        examples = {s: next(files[i] for i in ok if decoded[i].shape == s) for s in shapes}
        detail = "; ".join(f"{s[0]}x{s[1]}: {n} files, e.g. {examples[s]}" for s, n in shapes.most_common())
        raise DataError(f"images in {data_dir} differ in size ({detail}); collect them at one size")
    shape = next(iter(shapes))
    images = None
    if cache:
        images = np.empty((len(ok),) + shape, dtype=np.uint8)
        for j, i in enumerate(ok):
            images[j] = decoded[i]
    del decoded
    kept_files = [files[i] for i in ok]
    sidecar = read_sidecar(data_dir)
    frames = [dict(sidecar.get(os.path.normpath(os.path.relpath(p, data_dir)), {})) for p in kept_files]
    for frame, label, path in zip(frames, kept_labels.tolist(), kept_files):
        if frame and int(frame.get("label", label)) != label:
            raise DataError(
                f"{os.path.join(data_dir, SIDECAR_FILE)} labels {os.path.relpath(path, data_dir)} as "
                f"{frame.get('label')} but the file lies in the {'success' if label else 'failure'} folder"
            )
    return ImageFolderScan(
        files=kept_files, labels=kept_labels, images=images, image_shape=shape,
        skipped_files=skipped, metadata=read_metadata(data_dir), frames=frames
    )


def _split_rank(seed: int, path: str) -> str:
    rel = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    return hashlib.sha1(f"{int(seed)}:{rel}".encode("utf-8")).hexdigest()


def split_train_val(files: Sequence[str], labels: Sequence[int], val_split: float, seed: int = 0,
                    groups: Optional[Sequence[str]] = None) -> Tuple[List[int], List[int]]:
    """Reproducible train/val split; returns (train indices, val indices).

    Without ``groups``: stratified by file. Within each class the files are ordered by a seeded hash
    of ``<class>/<file name>`` and the first ``round(val_split * n)`` go to validation (at least 1 and
    at most n - 1 when the class has >= 2 files and val_split > 0).

    With ``groups`` (the episode id of each file): split by episode, so frames of one episode never sit
    on both sides. Episodes are ordered by a seeded hash of their id and go to validation until each
    class has about ``val_split`` of its frames there (an episode joins while a class it holds frames
    of still needs them; at least one frame of each class stays in training).

    The same files and seed always give the same split, whatever order the files come in; adding files
    moves few others.
    """
    if not 0.0 <= float(val_split) < 1.0:
        raise ValueError(f"val_split must lie in [0, 1), got {val_split}")
    labels = np.asarray(labels)
    if groups is not None:
        return _split_by_group(labels, list(groups), float(val_split), seed)
    train, val = [], []
    for label in sorted(set(labels.tolist()), reverse=True):
        idx = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: _split_rank(seed, files[i]))
        n = len(idx)
        n_val = int(round(float(val_split) * n))
        if val_split > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        else:
            n_val = 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _split_by_group(labels: np.ndarray, groups: List[str], val_split: float, seed: int) -> Tuple[List[int], List[int]]:
    if len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} entries for {len(labels)} files")
    members: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    totals = {c: int((labels == c).sum()) for c in np.unique(labels).tolist()}
    want = {c: int(round(val_split * n)) for c, n in totals.items()}
    have = {c: 0 for c in totals}
    val_groups = set()
    if val_split > 0:
        order = sorted(members, key=lambda g: hashlib.sha1(f"{int(seed)}:episode:{g}".encode("utf-8")).hexdigest())
        for g in order:
            counts = Counter(labels[members[g]].tolist())
            needed = [c for c in counts if have[c] < want[c]]
            fits = all(totals[c] - have[c] - counts[c] >= 1 for c in counts)  # keep each class in training
            if needed and fits:
                val_groups.add(g)
                for c, k in counts.items():
                    have[c] += k
            if all(have[c] >= want[c] for c in totals):
                break
    val = sorted(i for g in val_groups for i in members[g])
    train = sorted(i for g in members if g not in val_groups for i in members[g])
    return train, val


def class_balanced_sampler(labels: Sequence[int], num_samples: Optional[int] = None, seed: int = 0) -> WeightedRandomSampler:
    """Draws each class with equal probability (with replacement); ``num_samples`` defaults to len(labels)."""
    labels = np.asarray(labels)
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    weights = torch.as_tensor([1.0 / counts[c] for c in labels.tolist()], dtype=torch.double)
    gen = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples or len(labels), replacement=True, generator=gen)


class ImageFolderDataset(Dataset):
    """``(uint8 HxWx3 RGB array, float32 label)`` for the chosen indices of a scan."""

    def __init__(self, scan: ImageFolderScan, indices: Sequence[int]) -> None:
        self.indices = np.asarray(list(indices), dtype=np.int64)
        self.files = [scan.files[i] for i in self.indices]
        self.labels = scan.labels[self.indices].astype(np.float32)
        self._images = scan.images  # shared, not copied

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.float32]:
        if self._images is not None:
            image = self._images[self.indices[i]]
        else:
            image = _decode(self.files[i])
            if image is None:
                raise DataError(f"{self.files[i]} became unreadable during training")
        return image, self.labels[i]
