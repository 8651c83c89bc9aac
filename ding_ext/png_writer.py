"""PNG encoding off the caller's thread, with atomic file writes."""
import queue
import threading
from typing import Any, Callable, Optional, Tuple

import cv2
import numpy as np

from .checkpoint_io import atomic_write


def write_png(path: str, image_rgb: np.ndarray) -> None:
    """Encode an HxWx3 uint8 RGB image as PNG and write it atomically."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise IOError(f"PNG encoding failed for {path}")

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())

    atomic_write(path, _write)


def read_png(path: str) -> Optional[np.ndarray]:
    """Read a PNG as HxWx3 uint8 RGB; None when the file is unreadable or corrupt."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return None
    return img[..., ::-1].copy()


class AsyncPngWriter:
    """A background thread that encodes and writes PNG files; ``submit`` returns at once.

    ``flush()`` blocks until everything submitted is on disk and re-raises the first write error.
    """

    def __init__(self, max_queue: int = 1024) -> None:
        self._q: "queue.Queue[Optional[Tuple[str, Any, Optional[Callable[[], None]], Optional[Callable]]]]" = \
            queue.Queue(maxsize=max_queue)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="png-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    path, image, on_written, convert = item
                    write_png(path, np.asarray(image if convert is None else convert(image)))
                    if on_written is not None:
                        on_written()
            except BaseException as e:  # kept and re-raised by flush()
                self._error = e
            finally:
                self._q.task_done()

    def submit(self, path: str, image_rgb: Any, on_written: Optional[Callable[[], None]] = None,
               convert: Optional[Callable[[Any], np.ndarray]] = None) -> None:
        """Queue ``image_rgb`` for ``path``; ``convert`` (to an HxWx3 uint8 RGB array, if given) and ``on_written``
        (once the file is on disk) run on the writer thread, off the caller's."""
        if self._error is not None:
            raise self._error
        self._q.put((path, image_rgb if convert is not None else np.asarray(image_rgb), on_written, convert))

    def flush(self) -> None:
        self._q.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __del__(self) -> None:
        try:
            if self._thread.is_alive():
                self._q.put_nowait(None)
        except Exception:
            pass
