"""Checkpoint I/O: ``.safetensors`` with metadata, or ``.pt`` state dicts; atomic writes."""
import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

STRIP_PREFIXES = ("module.", "_orig_mod.")


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    os.close(fd)
    try:
        write_fn(tmp)
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
        atomic_write(path, lambda tmp: torch.save({"state_dict": state, "metadata": dict(metadata)}, tmp))
    else:
        raise ValueError(f"checkpoint path must end in .safetensors or .pt/.pth, got {path!r}")
    return path


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint; returns (state_dict with prefixes stripped, metadata or {})."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward-model checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, framework="pt") as f:
            metadata = _decode_meta(f.metadata())
        return strip_prefixes(load_file(path)), metadata
    obj = torch.load(path, map_location="cpu", weights_only=False)
    metadata: Dict[str, Any] = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        metadata = dict(obj.get("metadata") or {})
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        metadata = dict(obj.get("metadata") or {})
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return strip_prefixes(obj), metadata


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
                f"use a checkpoint trained with {key}={want!r} or set the config to {got!r}"
            )


def _normal(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_normal(x) for x in v]
    if v == "":
        return None
    return v
