"""LoRA adapters on a MuSES encoder, through PEFT and transformers' PEFT integration.

An adapter lives inside the encoder's Hugging Face model (``encoder.transformer.auto_model``) under its key, as
PEFT injects it (``add_adapter``); the :class:`~muses.encoder.MultiScaleEncoder` object, its heads, poolings and
Matryoshka dims are unchanged, so every encode method works with whichever adapter is active.

On disk an adapter is a plain folder:

- ``adapter_config.json`` and ``adapter_model.safetensors``: PEFT's own format (keys ``base_model.model.<layer>
  .lora_A.weight``...), loadable by ``peft.PeftModel.from_pretrained`` on the bare Hugging Face model too;
- ``muses_adapter.json``: the domain key, the base model's name and weights fingerprint, the routing centroid
  (:mod:`muses.adapters.router`) and free-form training info.

Nothing is unpickled: weights are safetensors, the rest JSON.

Caution: while adapters are attached, ``MultiScaleEncoder.save`` would write only the active adapter in place of
the transformer (transformers' PEFT behaviour); save adapters with :func:`save_adapter` and the encoder before
attaching any.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file

from muses.adapters.config import AdapterConfig, check_key
from muses.errors import InputError, ModelError

if TYPE_CHECKING:
    from peft import LoraConfig

    from muses.encoder import MultiScaleEncoder

ADAPTER_META = "muses_adapter.json"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
FORMAT_VERSION = 1


@dataclass
class AdapterMeta:
    """What ``muses_adapter.json`` records besides PEFT's files.

    Attributes:
        key: the domain or task key.
        base_model: the base model's name (``MultiScaleEncoder.base_name``).
        base_fingerprint: :func:`base_fingerprint` of the encoder the adapter was trained on.
        centroid: ``[H]`` routing centroid (mean word-piece embedding of the training texts), or None.
        n_texts: texts the centroid was computed from.
        info: free-form (training steps, data, losses...).
    """

    key: str
    base_model: str = ""
    base_fingerprint: str = ""
    centroid: list[float] | None = None
    n_texts: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: Path) -> AdapterMeta:
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise ModelError(f"{where} was written by a newer MuSES (format {raw['format_version']}); upgrade muses.")
        if not isinstance(raw.get("key"), str):
            raise ModelError(f"{where}: field 'key' is missing; is this a MuSES adapter folder?")
        return cls(
            key=raw["key"],
            base_model=str(raw.get("base_model", "")),
            base_fingerprint=str(raw.get("base_fingerprint", "")),
            centroid=raw.get("centroid"),
            n_texts=int(raw.get("n_texts", 0)),
            info=dict(raw.get("info") or {}),
        )


@dataclass
class AdapterFiles:
    """An adapter read from disk and not yet injected into a model (reading needs no lock on the model).

    Attributes:
        path: the folder.
        peft_config: its PEFT ``LoraConfig``.
        weights: PEFT state dict (``base_model.model.<layer>.lora_A.weight`` -> tensor).
        meta: ``muses_adapter.json``, or None for a bare PEFT folder (e.g. a training checkpoint).
    """

    path: Path
    peft_config: Any
    weights: dict[str, torch.Tensor]
    meta: AdapterMeta | None

    @property
    def nbytes(self) -> int:
        """Bytes of the adapter's weights."""
        return sum(t.numel() * t.element_size() for t in self.weights.values())


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter folder found by :func:`list_adapters` (read from its JSON files only)."""

    key: str
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    size_kb: float
    base_model: str
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------------- in the model


def hf_model(encoder: MultiScaleEncoder) -> Any:
    """The encoder's Hugging Face model, where PEFT injects adapters."""
    return encoder.transformer.auto_model


def loaded_adapters(encoder: MultiScaleEncoder) -> list[str]:
    """Keys of the adapters attached to the encoder (in insertion order)."""
    model = hf_model(encoder)
    if not getattr(model, "_hf_peft_config_loaded", False):
        return []
    return list(model.peft_config)


def adapter_parameters(encoder: MultiScaleEncoder, key: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of adapter ``key`` (``lora_A``: ``[r, in]``, ``lora_B``: ``[out, r]``), by name."""
    marker = f".{key}."
    return {n: p for n, p in hf_model(encoder).named_parameters() if "lora_" in n and marker in n}


def adapter_nbytes(encoder: MultiScaleEncoder, key: str) -> int:
    """Memory of adapter ``key``'s weights, in bytes."""
    return sum(p.numel() * p.element_size() for p in adapter_parameters(encoder, key).values())


def _peft_config(config: AdapterConfig | LoraConfig) -> Any:
    return config.to_peft() if isinstance(config, AdapterConfig) else config


def attach_adapter(
    encoder: MultiScaleEncoder, key: str, config: AdapterConfig | LoraConfig, trainable: bool = True
) -> list[torch.nn.Parameter]:
    """Inject a fresh adapter (``B = 0``: outputs equal the base model's) and make it the active one.

    Args:
        trainable: whether its parameters require gradients (the base's settings are not touched; the trainer
            freezes the rest).

    Returns:
        Its parameters.

    Raises:
        InputError: if ``key`` is already attached or is not a usable key.
    """
    _check_key(key)
    if key in loaded_adapters(encoder):
        raise InputError(f"an adapter {key!r} is already attached; remove it first or use another key.")
    model = hf_model(encoder)
    peft_config = _peft_config(config)
    try:
        with warnings.catch_warnings():  # several adapters in one model is the point here, not a mistake
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            model.add_adapter(peft_config, adapter_name=key)
    except ValueError as e:  # e.g. target modules that match no layer
        if key in loaded_adapters(encoder):
            model.delete_adapter(key)
        raise ModelError(f"cannot attach adapter {key!r}: {e}. Check target_modules against the model's layers.") from e
    model.train(model.training)  # the new layers take the model's mode: no adapter dropout while it encodes
    params = list(adapter_parameters(encoder, key).values())
    for p in params:
        p.requires_grad_(trainable)
    activate(encoder, key)
    return params


def activate(encoder: MultiScaleEncoder, key: str | None) -> None:
    """Make ``key`` the only active adapter, or (``None``) run the bare base model.

    A model's sentence branch is set aside while an adapter is active (see
    :attr:`~muses.encoder.MultiScaleEncoder.active_branch`)."""
    model = hf_model(encoder)
    if key is None:
        if loaded_adapters(encoder):
            model.disable_adapters()
        return
    if key not in loaded_adapters(encoder):
        raise InputError(f"adapter {key!r} is not attached; attached: {loaded_adapters(encoder) or 'none'}.")
    model.enable_adapters()
    model.set_adapter(key)


def remove_adapter(encoder: MultiScaleEncoder, key: str) -> None:
    """Detach adapter ``key`` and free its weights. When it was the active one, the base model becomes active."""
    if key not in loaded_adapters(encoder):
        raise InputError(f"adapter {key!r} is not attached; attached: {loaded_adapters(encoder) or 'none'}.")
    model = hf_model(encoder)
    was_active = key in model.active_adapters()
    model.delete_adapter(key)
    if was_active:
        activate(encoder, None)


def adapter_weights(encoder: MultiScaleEncoder, key: str) -> dict[str, torch.Tensor]:
    """PEFT state dict of adapter ``key`` (``base_model.model.<layer>.lora_A.weight`` -> CPU tensor copy)."""
    if key not in loaded_adapters(encoder):
        raise InputError(f"adapter {key!r} is not attached; attached: {loaded_adapters(encoder) or 'none'}.")
    state = hf_model(encoder).get_adapter_state_dict(key)
    return {PEFT_PREFIX + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def set_adapter_weights(encoder: MultiScaleEncoder, key: str, weights: dict[str, torch.Tensor]) -> None:
    """Copy a PEFT state dict into the attached adapter ``key`` (same rank and targets).

    Raises:
        ModelError: when the weights do not fit the adapter (other layers, ranks or sizes).
    """
    from peft.utils import set_peft_model_state_dict

    try:
        result: Any = set_peft_model_state_dict(hf_model(encoder), weights, adapter_name=key)
    except RuntimeError as e:  # size mismatch
        raise ModelError(f"adapter {key!r}: the weights do not fit this model ({str(e)[:300]}).") from e
    missing = [k for k in result.missing_keys if f".{key}." in k and "lora_" in k]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"adapter {key!r}: weights do not match its layers ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(result.unexpected_keys)} unexpected, e.g. {list(result.unexpected_keys)[:2]}). Was it trained on "
            "another base model?"
        )


def inject_adapter(encoder: MultiScaleEncoder, key: str, files: AdapterFiles, trainable: bool = False) -> None:
    """Attach an adapter read by :func:`read_adapter` under ``key`` and make it active.

    On any error the half-attached adapter is removed again, so the model is left as it was (apart from the
    active adapter).
    """
    attach_adapter(encoder, key, files.peft_config, trainable=trainable)
    try:
        set_adapter_weights(encoder, key, files.weights)
    except Exception:
        remove_adapter(encoder, key)
        raise


def _model_keys(weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """PEFT file keys (``base_model.model.<layer>.lora_A.weight``) -> the model's (``<layer>.lora_A.<name>.weight``)."""
    out = {}
    for key, value in weights.items():
        head, sep, tail = key.removeprefix(PEFT_PREFIX).rpartition("lora_")
        kind, _, rest = tail.partition(".")
        out[f"{head}{sep}{kind}.{name}.{rest}"] = value
    return out


def _targets(config: Any) -> frozenset[str]:
    t = config.target_modules
    return frozenset([t] if isinstance(t, str) else t or [])


def hotswap_adapter(encoder: MultiScaleEncoder, name: str, files: AdapterFiles) -> bool:
    """Overwrite attached adapter ``name``'s weights in place with ``files`` (PEFT's hotswap), when both have the
    same rank, alpha, targets and other output-relevant settings; returns False, changing nothing, otherwise.

    Much cheaper than detaching one adapter and attaching another: no module is created, tensors are copied.
    """
    from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict

    model = hf_model(encoder)
    old, new = model.peft_config[name], files.peft_config
    if (old.r, old.lora_alpha, _targets(old)) != (new.r, new.lora_alpha, _targets(new)):
        return False
    try:
        check_hotswap_configs_compatible(old, new)
    except ValueError:
        return False
    hotswap_adapter_from_state_dict(model, _model_keys(files.weights, name), adapter_name=name, config=new)
    model.peft_config[name] = new
    return True


def base_fingerprint(encoder: MultiScaleEncoder) -> str:
    """sha256 (16 hex digits) of the weights of the encoder's transformer (what adapters modify), LoRA excluded.

    The same with or without adapters attached; an adapter records the fingerprint of the model it was trained on.
    The heads are left out: an adapter composes with any heads over the same transformer.
    """
    h = hashlib.sha256()
    for name, p in encoder.transformer.named_parameters():
        if "lora_" in name:
            continue
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _check_key(key: str) -> None:
    try:
        check_key(key)
    except ValueError as e:
        raise InputError(str(e)) from None


# ---------------------------------------------------------------------------------------------- on disk


def write_peft_files(folder: Path, peft_config: Any, weights: dict[str, torch.Tensor]) -> None:
    """Write PEFT's ``adapter_config.json`` and ``adapter_model.safetensors`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(folder))
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(folder / PEFT_WEIGHTS_FILE), metadata={"format": "pt"}
    )


def write_adapter_folder(
    folder: str | os.PathLike[str], peft_config: Any, weights: dict[str, torch.Tensor], meta: AdapterMeta
) -> Path:
    """Write an adapter folder (PEFT files + ``muses_adapter.json``) to a temporary name, then rename it."""
    out = Path(folder)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_peft_files(tmp, peft_config, weights)
    (tmp / ADAPTER_META).write_text(json.dumps(meta.to_json(), indent=1) + "\n", encoding="utf-8")
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def save_adapter(
    encoder: MultiScaleEncoder,
    key: str,
    folder: str | os.PathLike[str],
    centroid: np.ndarray | Sequence[float] | None = None,
    n_texts: int = 0,
    info: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    attached_as: str | None = None,
) -> Path:
    """Save attached adapter ``key`` as a plain folder (written to a temporary name, then renamed).

    Args:
        centroid: ``[H]`` routing centroid (see :func:`muses.adapters.router.centroid`).
        fingerprint: :func:`base_fingerprint` of the encoder, when the caller has it already.
        attached_as: the adapter's name in the model when it is not ``key`` (e.g. an :class:`AdapterCache` slot).
    """
    name = attached_as or key
    meta = AdapterMeta(
        key=key,
        base_model=encoder.base_name,
        base_fingerprint=fingerprint or base_fingerprint(encoder),
        centroid=None if centroid is None else [float(x) for x in np.asarray(centroid, dtype=np.float64)],
        n_texts=n_texts,
        info=info or {},
    )
    return write_adapter_folder(folder, hf_model(encoder).peft_config[name], adapter_weights(encoder, name), meta)


def read_meta(folder: str | os.PathLike[str]) -> AdapterMeta:
    """Read ``muses_adapter.json`` of an adapter folder (no weights)."""
    path = Path(folder) / ADAPTER_META
    if not path.is_file():
        raise ModelError(f"{folder} is not a MuSES adapter folder (no {ADAPTER_META}); see `muses adapters list`.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    return AdapterMeta.from_json(raw, path)


def read_adapter(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu", require_meta: bool = True
) -> AdapterFiles:
    """Read an adapter folder from disk (config, safetensors weights, metadata); touches no model.

    Raises:
        ModelError: for a missing folder or file, a non-LoRA adapter, or malformed metadata.
    """
    from muses.extras import require

    require("peft", "adapters")
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    path = Path(folder)
    for name in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ModelError(
                f"adapter folder {path} has no {name}; save adapters with `muses adapters train` or save_adapter."
            )
    raw = json.loads((path / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
    if raw.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{path} holds a {raw.get('peft_type')} adapter; MuSES serves LoRA adapters only.")
    peft_config = LoraConfig.from_pretrained(str(path))
    weights = load_peft_weights(str(path), device=str(device))
    meta = read_meta(path) if require_meta or (path / ADAPTER_META).is_file() else None
    return AdapterFiles(path=path, peft_config=peft_config, weights=weights, meta=meta)


def load_adapter(
    encoder: MultiScaleEncoder, folder: str | os.PathLike[str], key: str | None = None, trainable: bool = False
) -> str:
    """Read an adapter folder and attach it (active) under ``key`` (default: the key it was saved with)."""
    files = read_adapter(folder, device=encoder.device)
    name = key or (files.meta.key if files.meta else Path(folder).name)
    inject_adapter(encoder, name, files, trainable=trainable)
    return name


def list_adapters(root: str | os.PathLike[str]) -> list[AdapterInfo]:
    """Every adapter folder under ``root`` (``root`` itself included), sorted by key; reads JSON only.

    Raises:
        ModelError: if ``root`` does not exist, or two folders hold the same key.
    """
    base = Path(root)
    if not base.is_dir():
        raise ModelError(f"adapter folder {base} does not exist; train adapters with `muses adapters train`.")
    out: dict[str, AdapterInfo] = {}
    for meta_file in sorted(base.rglob(ADAPTER_META)):
        folder = meta_file.parent
        if folder.name.endswith((".tmp", ".old")) or not (folder / PEFT_CONFIG_FILE).is_file():
            continue
        meta = read_meta(folder)
        if meta.key in out:
            raise ModelError(
                f"adapter key {meta.key!r} is in both {out[meta.key].path} and {folder}; keep one, or rename one "
                f"(the key is in {ADAPTER_META})."
            )
        cfg = json.loads((folder / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
        weights = folder / PEFT_WEIGHTS_FILE
        targets = cfg.get("target_modules") or []
        out[meta.key] = AdapterInfo(
            key=meta.key,
            path=folder,
            rank=int(cfg.get("r", 0)),
            alpha=float(cfg.get("lora_alpha", 0)),
            target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
            size_kb=round(weights.stat().st_size / 1024, 1) if weights.is_file() else 0.0,
            base_model=meta.base_model,
            info=meta.info,
        )
    return [out[k] for k in sorted(out)]
