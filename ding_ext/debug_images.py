"""Debug image dump: each scored image goes to ``resnet_success/`` or ``resnet_fail/``, converted and PNG-encoded on
a background thread (the scoring call only queues it).

File names are ``{id:06d}_prob{p:.4f}.png``. Ids are never reused: the writer starts after the
largest id already present in either folder, so a restart continues the sequence.
"""
import os
import re
import threading
from typing import Iterable, Optional


from .image_utils import to_uint8_hwc
from .png_writer import AsyncPngWriter

_ID_RE = re.compile(r"^(\d+)_prob")
SUCCESS_DIR, FAIL_DIR = "resnet_success", "resnet_fail"


def next_free_id(*dirs: str, pattern: "re.Pattern[str]" = _ID_RE) -> int:
    """One past the largest numeric id in the file names of ``dirs`` (0 when none)."""
    best = -1
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            m = pattern.match(name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


class DebugImageWriter:
    """Writes scored images in the background; ``flush()`` waits until all are on disk."""

    def __init__(self, root: str, threshold: float = 0.5) -> None:
        self.root = root
        self.threshold = threshold
        self.success_dir = os.path.join(root, SUCCESS_DIR)
        self.fail_dir = os.path.join(root, FAIL_DIR)
        os.makedirs(self.success_dir, exist_ok=True)
        os.makedirs(self.fail_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._next_id = next_free_id(self.success_dir, self.fail_dir)
        self._writer = AsyncPngWriter()

    def write(self, images: Iterable, probs: Iterable[float]) -> None:
        for image, p in zip(images, probs):
            with self._lock:
                idx = self._next_id
                self._next_id += 1
            folder = self.success_dir if p > self.threshold else self.fail_dir
            # the conversion and the PNG encoding run on the writer thread, off the scoring path
            self._writer.submit(os.path.join(folder, f"{idx:06d}_prob{float(p):.4f}.png"), image,
                                convert=to_uint8_hwc)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def debug_dir_from(config_value: Optional[str]) -> Optional[str]:
    """The configured debug directory, or the ``DEBUG_IMAGE_SAVE_DIR`` env var when the config has none."""
    return config_value or os.environ.get("DEBUG_IMAGE_SAVE_DIR") or None


__all__ = ["DebugImageWriter", "debug_dir_from", "next_free_id"]
