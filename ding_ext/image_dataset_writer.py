"""Writes labelled reward images as ``<save_dir>/success/0001.png`` and ``<save_dir>/failure/0001.png``.

The format the reward-model trainer reads. Numbering is 1-based and zero-padded to 4 digits (it
grows to 5+ digits past 9999; readers sort numerically). A restart continues after the largest
number in each folder and counts the files already there toward the targets, so nothing is
overwritten. PNG encoding runs on a background thread. ``metadata.json`` records the env settings
the images were produced with; a restart with different settings is an error naming the field.

``frames.jsonl`` (the sidecar, see ``ding_ext.image_folder_dataset.read_sidecar``) gets one row per
PNG, appended and flushed right after the PNG is on disk: file, label, episode id, step, source
(policy / planner / human / ...) and the facts behind the label that the env offered.
"""
import json
import os
import re
import threading
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

from .checkpoint_io import check_metadata, write_json_atomic
from .image_folder_dataset import METADATA_FILE, SIDECAR_FILE, read_metadata
from .image_utils import to_uint8_hwc
from .png_writer import AsyncPngWriter
from .transitions import FRAME_INFO_KEY, labelled_images

CLASSES = ("success", "failure")
_NUM_RE = re.compile(r"^(\d+)\.png$")


def numbered_pngs(folder: str):
    """(number, path) of ``<digits>.png`` files in ``folder``, sorted numerically."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NUM_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


class LabelledImageWriter:
    """Samples and writes success/failure images up to per-class targets."""

    def __init__(
        self,
        save_dir: str,
        target_success: int = 5000,
        target_failure: int = 5000,
        sample_rate_success: float = 1.0,
        sample_rate_fail: float = 0.01,
        metadata: Optional[Mapping[str, Any]] = None,
        seed: int = 0,
        tb_logger: Any = None,
        progress: bool = True,
    ) -> None:
        for name, rate in (("sample_rate_success", sample_rate_success), ("sample_rate_fail", sample_rate_fail)):
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {rate}")
        self.save_dir = save_dir
        self.targets = {"success": int(target_success), "failure": int(target_failure)}
        self.rates = {"success": float(sample_rate_success), "failure": float(sample_rate_fail)}
        self.dirs = {c: os.path.join(save_dir, c) for c in CLASSES}
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        self.counts: Dict[str, int] = {}
        self._next: Dict[str, int] = {}
        for c in CLASSES:
            files = numbered_pngs(self.dirs[c])
            self.counts[c] = len(files)
            self._next[c] = (files[-1][0] + 1) if files else 1
        self._write_metadata(dict(metadata or {}))
        self._rng = np.random.default_rng(seed + sum(self.counts.values()))
        self._png = AsyncPngWriter()
        self._sidecar = _open_sidecar(os.path.join(save_dir, SIDECAR_FILE))
        self._sidecar_lock = threading.Lock()
        self.tb_logger = tb_logger
        self._bar = None
        if progress:
            from tqdm import tqdm
            self._bar = tqdm(
                total=sum(self.targets.values()), initial=min(self.counts["success"], self.targets["success"]) +
                min(self.counts["failure"], self.targets["failure"]), desc="reward images", unit="img",
                dynamic_ncols=True
            )
            self._update_bar(0)

    def _write_metadata(self, metadata: Dict[str, Any]) -> None:
        existing = read_metadata(self.save_dir)
        check_metadata(existing, metadata, source=f"existing dataset {self.save_dir}")
        write_json_atomic(os.path.join(self.save_dir, METADATA_FILE), {**existing, **metadata}, sort_keys=True)

    def full(self, cls: str) -> bool:
        return self.counts[cls] >= self.targets[cls]

    @property
    def done(self) -> bool:
        return all(self.full(c) for c in CLASSES)

    def add(self, image: Any, success: bool, frame_info: Optional[Mapping[str, Any]] = None,
            source: str = "policy") -> bool:
        """Sample one frame; returns True when it was queued for writing.

        ``frame_info``: the env's ``info['frame_info']`` (``episode_id``, ``step`` and label facts) for the
        sidecar row; ``source``: where the frame comes from (policy | planner | human | ...)."""
        cls = "success" if success else "failure"
        if self.full(cls) or self._rng.random() >= self.rates[cls]:
            return False
        name = f"{self._next[cls]:04d}.png"
        row = dict(file=f"{cls}/{name}", label=int(bool(success)), episode_id=None, step=None, source=source)
        row.update({k: _json_value(v) for k, v in (frame_info or {}).items()})
        self._png.submit(os.path.join(self.dirs[cls], name), to_uint8_hwc(image), lambda: self._append_row(row))
        self._next[cls] += 1
        self.counts[cls] += 1
        self._update_bar(1)
        return True

    def _append_row(self, row: Dict[str, Any]) -> None:
        with self._sidecar_lock:
            self._sidecar.write(json.dumps(row, sort_keys=True) + "\n")
            self._sidecar.flush()

    def add_transitions(self, transitions: Iterable[Mapping[str, Any]], image_key: str = "reward_image",
                        success_key: str = "success", step: Optional[int] = None, source: str = "policy") -> int:
        """Add every transition that carries an image and a success flag (the label), with its
        ``frame_info`` when present. Returns frames written."""
        written = 0
        for t in transitions:
            images, labels = labelled_images([t], image_key, success_key)
            if images:
                written += self.add(images[0], labels[0], t.get(FRAME_INFO_KEY), source)
        if self.tb_logger is not None and step is not None:
            self.tb_logger.add_scalar("reward_data/success_count", self.counts["success"], step)
            self.tb_logger.add_scalar("reward_data/failure_count", self.counts["failure"], step)
        return written

    def _update_bar(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(
                success=f"{self.counts['success']}/{self.targets['success']}",
                failure=f"{self.counts['failure']}/{self.targets['failure']}",
                refresh=False
            )

    def flush(self) -> None:
        self._png.flush()

    def close(self) -> None:
        try:
            self._png.close()
        finally:
            self._sidecar.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _open_sidecar(path: str):
    """Open the sidecar for appending; a row cut short by a crash is ended first, so the next row stays whole."""
    cut_short = False
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut_short = f.read(1) != b"\n"
    f = open(path, "a", encoding="utf-8")
    if cut_short:
        f.write("\n")
        f.flush()
    return f


def _json_value(v: Any) -> Any:
    """numpy / torch scalars and arrays (DI-engine's env manager turns the info's lists into tensors) as plain
    python values and lists for the sidecar."""
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
