"""Checkpoint I/O: ``.safetensors`` with metadata, or ``.pt`` state dicts; atomic writes."""
import json
import os
import re
import secrets
import stat
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

STRIP_PREFIXES = ("module.", "_orig_mod.")


def _create_temp(directory: str, suffix: str) -> Tuple[str, int]:
    """Create an empty, uniquely named file in ``directory``; returns (path, the mode a plain ``open()`` gives).

    ``os.open(..., 0o666)`` lets the kernel apply the process umask, unlike ``tempfile.mkstemp``
    (always 0600), and the resulting mode is read back from the file: the umask is never changed, so
    this is safe from any thread.
    """
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode
    raise FileExistsError(f"could not create a temporary file in {directory}")


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file.

    The file gets the permissions a plain ``open()`` would give it (0o666 minus the umask), also when
    ``write_fn`` replaces the temporary file (safetensors creates its own with mode 0600).
    """
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, mode = _create_temp(os.path.dirname(path), os.path.splitext(path)[1])
    try:
        write_fn(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj)`` into ``path`` through ``atomic_write``."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, **dump_kwargs)

    atomic_write(path, _write)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``) key prefixes."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _encode_meta(metadata: Mapping[str, Any]) -> Dict[str, str]:
    return {k: json.dumps(v) for k, v in metadata.items()}


def _decode_meta(raw: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    out = {}
    for k, v in (raw or {}).items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def save_checkpoint(path: str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> str:
    """Write ``state_dict`` with ``metadata`` to ``path`` (``.safetensors`` or ``.pt``), atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=_encode_meta(metadata)))
    elif path.endswith((".pt", ".pth", ".pth.tar")):
        plain = json.loads(json.dumps(dict(metadata)))  # plain JSON values (no EasyDict): weights_only can load them
        atomic_write(path, lambda tmp: torch.save({"state_dict": state, "metadata": plain}, tmp))
    else:
        raise ValueError(f"checkpoint path must end in .safetensors or .pt/.pth, got {path!r}")
    return path


def update_checkpoint_metadata(path: str, updates: Mapping[str, Any]) -> Dict[str, Any]:
    """Rewrite the checkpoint at ``path`` (atomically, same weights) with ``updates`` added to its metadata; returns
    ``updates`` as a dict."""
    weights, meta = load_checkpoint(path)
    meta.update(updates)
    save_checkpoint(path, weights, meta)
    return dict(updates)


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint; returns (state_dict with prefixes stripped, metadata or {}).

    A ``.pt`` file holds a state dict, or one under ``state_dict`` / ``model`` (with ``metadata`` beside it) or
    ``model_state_dict`` (RLinf's trainer).

    ``.pt`` files are read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
    file cannot run code when loaded. Raises ``ValueError`` naming the path for a corrupt or truncated
    file, or for a ``.pt`` file that holds other pickled objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward-model checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(path, framework="pt") as f:
                metadata = _decode_meta(f.metadata())
            state = load_file(path)
        except OSError:
            raise
        except Exception as e:  # safetensors raises its own SafetensorError for a bad header or short data
            raise ValueError(_corrupt_message(path, "safetensors", e)) from e
        return strip_prefixes(state), metadata
    obj = _torch_load_weights_only(path)
    metadata: Dict[str, Any] = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        metadata = dict(obj.get("metadata") or {})
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        metadata = dict(obj.get("metadata") or {})
        obj = obj["model"]
    elif isinstance(obj, dict) and "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        obj = obj["model_state_dict"]  # RLinf's trainer wraps the weights with the optimiser's state
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return strip_prefixes(obj), metadata


def _corrupt_message(path: str, kind: str, error: BaseException) -> str:
    text = str(error)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)  # torch's weights-only wrapper
    reason = m.group(1) if m else (text.strip().splitlines() or [""])[0]
    return (f"checkpoint {path} is corrupt or truncated: it cannot be read as a {kind} file "
            f"({type(error).__name__}: {reason.strip()}); write it again or use another checkpoint")


def _torch_load_weights_only(path: str) -> Any:
    """``torch.load`` restricted to tensors and plain values; errors name ``path``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:
        m = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        if m:  # the weights-only unpickler refused a class or function
            raise ValueError(
                f"refusing to load checkpoint {path}: it holds pickled Python objects ({m.group(1)}) besides "
                "tensors and plain values (str, int, float, bool, list, dict, None), and unpickling them could run "
                "arbitrary code; load it only if you trust it and re-save its weights as a state dict "
                "(or .safetensors)"
            ) from e
        raise ValueError(_corrupt_message(path, ".pt", e)) from e


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Only the tensors of a checkpoint (e.g. torchvision weights files)."""
    return load_checkpoint(path)[0]


def check_metadata(metadata: Mapping[str, Any], expected: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` naming the first field whose checkpoint value disagrees with the config."""
    for key, want in expected.items():
        if key not in metadata:
            continue
        got = metadata[key]
        if _normal(got) != _normal(want):
            raise ValueError(
                f"{source} metadata field {key!r} is {got!r} but the config says {want!r}; "
                f"use one made with {key}={want!r} or set the config to {got!r}"
            )


def _normal(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_normal(x) for x in v]
    if v == "":
        return None
    return v
