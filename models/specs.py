"""Parts of a model given as plain specs, so that a model is rebuilt from its hyper-parameters.

A spec is a plain mapping ``{"_target_": "package.module.Name", **kwargs}`` (nested specs allowed;
``"_partial_": true`` gives a factory that takes the remaining arguments later, e.g. an optimiser
that takes the parameters). The model configs (``configs/model/*.yaml``) pass their ``net``,
``optimizer`` and ``scheduler`` as such specs (``_recursive_: false``), the module builds them
itself and stores the specs as hyper-parameters: a checkpoint then holds only plain data, and
``RegistrationModule.load_from_checkpoint(path)`` (Lightning's own) rebuilds the model. Objects
(an ``nn.Module``, a ``functools.partial``) are accepted too and used as they are.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Mapping

__all__ = ["is_spec", "built", "factory", "locate", "plain", "ALLOWED_TARGETS"]

# What a spec may build (a checkpoint's hyper-parameters are specs: building an arbitrary callable
# from a file would run code). Extend it to use networks of another package.
ALLOWED_TARGETS = ["models.", "classical.", "losses.", "spatial.", "torch.optim.", "torch.nn.", "monai.networks."]

_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts / lists (resolved); anything else unchanged."""
    try:
        from omegaconf import Container, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def is_spec(value: Any) -> bool:
    """Whether ``value`` is a spec (a mapping with a ``_target_``)."""
    value = plain(value)
    return isinstance(value, Mapping) and "_target_" in value


def locate(path: str) -> Any:
    """The object at dotted ``path`` (``"torch.optim.Adam"``); ValueError naming it when absent or
    outside :data:`ALLOWED_TARGETS`."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"_target_ must be a dotted path, got {path!r}")
    if not any(path.startswith(prefix) for prefix in ALLOWED_TARGETS):
        raise ValueError(f"_target_ {path!r} is not one a model may be built from (models.specs.ALLOWED_TARGETS: "
                         f"{', '.join(ALLOWED_TARGETS)})")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        return obj
    raise ValueError(f"_target_ {path!r} does not exist here")


def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: built(v) for k, v in spec.items() if k not in _KEYS}


def built(value: Any) -> Any:
    """``value`` with every spec in it built (objects, numbers, strings unchanged); a spec with
    ``_partial_: true`` becomes ``functools.partial(target, **kwargs)``."""
    value = plain(value)
    if is_spec(value):
        target = locate(value["_target_"])
        if value.get("_partial_"):
            return functools.partial(target, **_kwargs(value))
        return target(*value.get("_args_", ()), **_kwargs(value))
    if isinstance(value, list):
        return [built(v) for v in value]
    if isinstance(value, Mapping):
        return {k: built(v) for k, v in value.items()}
    return value


def factory(value: Any) -> Any:
    """A callable that builds the object later from the remaining arguments: a spec (partial or
    not) as ``functools.partial(target, **kwargs)``; a callable as it is; None stays None."""
    value = plain(value)
    if value is None or callable(value):
        return value
    if is_spec(value):
        return functools.partial(locate(value["_target_"]), **_kwargs(value))
    raise ValueError(f"expected a spec with _target_ or a callable, got {value!r}")
