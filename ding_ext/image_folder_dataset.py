"""The labelled PNG folders written by the collection stage, as a torch ``Dataset``.

Layout::

    <data>/success/0001.png ...   label 1
    <data>/failure/0001.png ...   label 0
    <data>/metadata.json          optional: env settings (control_mode, reward_render_mode, ...)

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


@dataclass
class ImageFolderScan:
    """Result of ``scan_image_folder``: the decodable files with labels, and what was skipped."""
    files: List[str]
    labels: np.ndarray  # int64, 1 = success, 0 = failure
    images: Optional[np.ndarray]  # N x H x W x 3 uint8 when cached, else None
    image_shape: Tuple[int, int, int]
    skipped_files: List[str] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)

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
    return ImageFolderScan(
        files=[files[i] for i in ok], labels=kept_labels, images=images, image_shape=shape,
        skipped_files=skipped, metadata=read_metadata(data_dir)
    )


def _split_rank(seed: int, path: str) -> str:
    rel = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    return hashlib.sha1(f"{int(seed)}:{rel}".encode("utf-8")).hexdigest()


def split_train_val(files: Sequence[str], labels: Sequence[int], val_split: float, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Stratified, reproducible split; returns (train indices, val indices).

    Within each class the files are ordered by a seeded hash of ``<class>/<file name>`` and the first
    ``round(val_split * n)`` go to validation (at least 1 and at most n - 1 when the class has >= 2
    files and val_split > 0). The same files and seed always give the same split, whatever order the
    files come in; adding files moves few others.
    """
    if not 0.0 <= float(val_split) < 1.0:
        raise ValueError(f"val_split must lie in [0, 1), got {val_split}")
    labels = np.asarray(labels)
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
