"""Cameras for the Franka env: one small interface, three sources.

    camera = make_camera(dict(type='sim', host='127.0.0.1', port=40123))
    frame = camera.read()   # HxWx3 RGB uint8, the camera's own size
    camera.close()

``SimCamera`` reads frames from ``dizoo_franka.sim_cell`` (its frame protocol is described there),
``OpenCVCamera`` a ``cv2.VideoCapture`` device (a USB webcam), ``RealSenseCamera`` an Intel RealSense colour
stream chosen by serial number (``pyrealsense2``, imported only when such a camera is made). Resizing to the
env's ``image_size`` is done by the env, once, with ``resize_rgb``.
"""
import socket
import struct
from typing import Any, Mapping, Optional

import numpy as np

from ding_ext.image_utils import resize_rgb  # noqa: F401  (the env's resize; the demo loader uses the same)

# must match dizoo_franka.sim_cell (that module runs in the robot-sim venv and is not imported here)
FRAME_REQUEST = b"F"
FRAME_HEADER = struct.Struct("!IHHH")  # n_bytes, height, width, channels


class Camera:
    """A colour camera: ``read()`` returns the latest frame as HxWx3 RGB uint8; ``close()`` releases it."""

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Camera":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SimCamera(Camera):
    """Frames rendered by the sim cell's camera, one request per ``read()`` over a loopback TCP socket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> None:
        if not port:
            raise ValueError("SimCamera needs the cell's camera port (printed in its READY line)")
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)

    def _recv_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the sim cell closed the frame connection")
            buf += chunk
        return bytes(buf)

    def read(self) -> np.ndarray:
        self._sock.sendall(FRAME_REQUEST)
        n_bytes, height, width, channels = FRAME_HEADER.unpack(self._recv_exactly(FRAME_HEADER.size))
        if n_bytes != height * width * channels:
            raise ConnectionError(f"bad frame header: {n_bytes} bytes for {height}x{width}x{channels}")
        return np.frombuffer(self._recv_exactly(n_bytes), dtype=np.uint8).reshape(height, width, channels)

    def close(self) -> None:
        self._sock.close()


class OpenCVCamera(Camera):
    """A ``cv2.VideoCapture`` device (index or path); frames come back as RGB."""

    def __init__(self, device: Any = 0, width: Optional[int] = None, height: Optional[int] = None) -> None:
        import cv2
        self._cv2 = cv2
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise RuntimeError(f"OpenCV could not open camera device {device!r}")
        if width:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        self.device = device

    def read(self) -> np.ndarray:
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            raise RuntimeError(f"OpenCV camera {self.device!r} returned no frame")
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._capture.release()


class RealSenseCamera(Camera):
    """The colour stream of an Intel RealSense camera, chosen by serial number (any camera when None)."""

    def __init__(self, serial: Optional[str] = None, width: int = 640, height: int = 480, fps: int = 30) -> None:
        try:
            import pyrealsense2 as rs
        except ImportError as e:
            raise ImportError(
                "RealSenseCamera needs pyrealsense2 (pip install pyrealsense2), which is not installed"
            ) from e
        self._pipeline = rs.pipeline()
        config = rs.config()
        if serial:
            config.enable_device(str(serial))
        config.enable_stream(rs.stream.color, int(width), int(height), rs.format.rgb8, int(fps))
        self._pipeline.start(config)
        self.serial = serial

    def read(self) -> np.ndarray:
        frames = self._pipeline.wait_for_frames()
        color = frames.get_color_frame()
        if not color:
            raise RuntimeError(f"RealSense camera {self.serial!r} returned no colour frame")
        return np.asanyarray(color.get_data()).copy()

    def close(self) -> None:
        self._pipeline.stop()


CAMERA_TYPES = {"sim": SimCamera, "opencv": OpenCVCamera, "realsense": RealSenseCamera}


def make_camera(cfg: Mapping[str, Any]) -> Camera:
    """A camera from a config dict: ``type`` (sim | opencv | realsense) and that class's keyword arguments."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in CAMERA_TYPES:
        raise ValueError(f"camera type must be one of {sorted(CAMERA_TYPES)}, got {kind!r}")
    return CAMERA_TYPES[kind](**cfg)
