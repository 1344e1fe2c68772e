"""Config values of the wrong type, refused before any work with ONE error naming the key.

One mechanism, two sources of the expected types:

* the entry points' own top-level keys (:data:`TOP_LEVEL`: ``seed`` an int; ``train``, ``test``,
  ``save_outputs`` strictly ``true``/``false``, so ``save_outputs=no`` is an error and not
  ``bool('no') == True``; ``ckpt_path`` a path or null);
* every node with a ``_target_`` (``model``, ``model.net``, ``model.optimizer``, ``data``,
  ``trainer``, ``callbacks.*``...): the type annotations of the class or function it builds
  (``inspect.signature`` + ``typing.get_type_hints``). A class taking ``**settings`` may name
  them with a ``settings_hints(node)`` classmethod (the classical optimisers: their config
  dataclass). A mapping value whose annotation names a dataclass is checked against it
  (``model.affine.lr``).

Only what a YAML / command-line value can be is judged: ``None``, bool, int, float, str, lists
and mappings. An int is accepted where a float is expected, never a bool where a number is (nor
the reverse); ``torch.Tensor`` in an annotation is ignored (a config value is never one); an
annotation naming another class (a value Hydra may build) makes the check accept the value.
Range checks stay with the code that owns the value; the optimiser and scheduler are built once
on a dummy parameter (:func:`check_optimizer`), so ``model.optimizer.lr=-1`` fails here, named.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence as SequenceABC
from typing import Any

from omegaconf import DictConfig, ListConfig

__all__ = ["TOP_LEVEL", "check_config", "check_node", "check_optimizer"]

_NONE = type(None)
# the entry points' own keys: name -> accepted Python types of the value
TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "seed": (int,),
    "train": (bool,),
    "test": (bool,),
    "save_outputs": (bool,),
    "ckpt_path": (str, _NONE),
    # register.py / apply.py
    "normalize": (bool,),
    "label": (bool,),
    "inverse": (bool,),
    "device": (str,),
    **{key: (str, _NONE) for key in ("fixed", "moving", "fixed_label", "moving_label", "out", "image", "reference")},
}
_TYPE_WORDS = {bool: "true or false", int: "an int", float: "a number", str: "a string", _NONE: "null"}
_GROUPS = ("model", "data", "trainer", "callbacks", "logger")


def _error(key: str, message: str) -> Exception:
    from app.errors import ConfigError

    return ConfigError(f"{key}: {message}")


def _get(node: DictConfig | ListConfig, key: Any) -> tuple[bool, Any]:
    """(True, value) or (False, None) when the value cannot be read yet (a missing value, an
    interpolation that does not resolve here): the builder reports those."""
    try:
        return True, node[key]
    except Exception:  # noqa: BLE001 - left to instantiate
        return False, None


def _describe(types: tuple[type, ...]) -> str:
    words = [_TYPE_WORDS.get(t, t.__name__) for t in types if not (t is int and float in types)]
    return " or ".join(dict.fromkeys(words))


def _plain_type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    return any(isinstance(value, t) for t in types if t is not bool)


def check_config(cfg: DictConfig) -> None:
    """Top-level keys, then every ``_target_`` node of the groups the entry points build, then the
    optimiser. Raises :class:`app.build.ConfigError` naming the first bad key."""
    for key, allowed in TOP_LEVEL.items():
        if key in cfg:
            ok, value = _get(cfg, key)
            if ok and not _plain_type_ok(value, allowed):
                raise _error(key, f"expected {_describe(allowed)}, got {value!r}")
    for group in _GROUPS:
        ok, node = _get(cfg, group) if group in cfg else (False, None)
        if not ok or not isinstance(node, DictConfig):
            continue
        if "_target_" in node:
            check_node(node, group)
        else:  # callbacks / logger: a mapping of named nodes
            for name in node:
                ok, child = _get(node, name)
                if ok and isinstance(child, DictConfig) and "_target_" in child:
                    check_node(child, f"{group}.{name}")
    check_optimizer(cfg)


# ------------------------------------------------------------------------------ annotations


def _locate(path: str) -> Any:
    try:
        from hydra.utils import get_object

        return get_object(path)
    except Exception:  # noqa: BLE001 - an unknown target: instantiate names it
        return None


def _hints(target: Any, node: DictConfig) -> dict[str, Any]:
    """Parameter name -> annotation of what ``target`` builds (empty when unknown)."""
    func = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward references: no check
        hints = {}
    out = {name: hints[name] for name in sig.parameters if name in hints}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        extra = getattr(target, "settings_hints", None)
        if callable(extra):
            try:
                out.update(extra(node))
            except Exception:  # noqa: BLE001 - e.g. an unknown algorithm: the class names it
                pass
    return out


def _dataclass_hints(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def check_node(node: DictConfig, key: str) -> None:
    """Check the values of one ``_target_`` node (and its nested ones) against what it builds."""
    target = _locate(str(node.get("_target_")))
    hints = _hints(target, node) if target is not None else {}
    _check_mapping(node, key, hints)


def _check_mapping(node: DictConfig, key: str, hints: dict[str, Any]) -> None:
    for name in node:
        name = str(name)
        if name.startswith("_"):
            continue
        ok, value = _get(node, name)
        if not ok:
            continue
        if isinstance(value, DictConfig) and "_target_" in value:
            check_node(value, f"{key}.{name}")
            continue
        if name in hints:
            _check_value(value, hints[name], f"{key}.{name}")


def _options(annotation: Any) -> list[Any]:
    """The alternatives of a Union / Optional (the annotation itself otherwise)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _is_tensor(t: Any) -> bool:
    return getattr(t, "__module__", "").startswith("torch") and getattr(t, "__name__", "") == "Tensor"


def _check_value(value: Any, annotation: Any, key: str) -> None:
    """ConfigError when ``value`` cannot be ``annotation``; silent when unsure."""
    options = [o for o in _options(annotation) if not _is_tensor(o)]
    if not options:
        return
    plain: list[type] = []
    literals: list[Any] = []
    seq_items: list[Any] = []  # element annotations of the sequence alternatives
    seq_any = False
    map_ok = False
    dataclass_options: list[type] = []
    for opt in options:
        origin = typing.get_origin(opt)
        if opt is typing.Any or isinstance(opt, typing.TypeVar) or opt is object:
            return
        if origin is typing.Literal:
            literals += list(typing.get_args(opt))
        elif opt in (bool, int, float, str, _NONE):
            plain.append(opt)
        elif inspect.isclass(opt) and dataclasses.is_dataclass(opt):
            dataclass_options.append(opt)
        elif origin in (list, tuple, set, frozenset) or origin in (SequenceABC, typing.Sequence) or \
                opt in (list, tuple, SequenceABC):
            args = [a for a in typing.get_args(opt) if a is not Ellipsis]
            if args:
                seq_items += args
            else:
                seq_any = True
        elif origin in (dict, MappingABC, typing.Mapping) or opt in (dict, MappingABC):
            map_ok = True
        elif origin is not None or inspect.isclass(opt):
            if inspect.isclass(opt) and issubclass(opt, (str,)):
                plain.append(str)
            elif inspect.isclass(opt) and opt.__module__ == "pathlib":
                plain.append(str)
            else:
                return  # another class (Hydra may build it from a mapping or a string): no judgement
        else:
            return
    if isinstance(value, DictConfig):
        if dataclass_options:  # checked against the dataclass even where a plain mapping is accepted
            _check_mapping(value, key, _dataclass_hints(dataclass_options[0]))
            return
        if map_ok:
            return
        raise _error(key, f"expected {_expected(plain, literals, seq_items or seq_any)}, got a mapping {value!r}")
    if isinstance(value, ListConfig):
        if seq_any:
            return
        if seq_items:
            item_annotation = typing.Union[tuple(seq_items)] if len(seq_items) > 1 else seq_items[0]
            for i in range(len(value)):
                ok, item = _get(value, i)
                if ok:
                    _check_value(item, item_annotation, f"{key}[{i}]")
            return
        raise _error(key, f"expected {_expected(plain, literals, False)}, got a list {list(value)!r}")
    if literals and value in literals and not (isinstance(value, bool) and not any(isinstance(x, bool) for x in literals)):
        return
    if plain and _plain_type_ok(value, tuple(plain)):
        return
    raise _error(key, f"expected {_expected(plain, literals, seq_items or seq_any)}, got {value!r}")


def _expected(plain: list[type], literals: list[Any], sequence: Any) -> str:
    words = []
    if plain:
        words.append(_describe(tuple(plain)))
    if literals:
        words.append("one of " + ", ".join(repr(x) for x in literals))
    if sequence:
        words.append("a list")
    return " or ".join(words) or "another kind of value"


# ------------------------------------------------------------------------------ optimiser


def check_optimizer(cfg: DictConfig) -> None:
    """Build ``model.optimizer`` (and ``model.scheduler``) once on a dummy parameter: a value the
    optimiser refuses (``lr=-1``) is an error naming ``model.optimizer.<key>`` before any work."""
    model = cfg.get("model") if "model" in cfg else None
    if not isinstance(model, DictConfig):
        return
    ok, opt_node = _get(model, "optimizer") if "optimizer" in model else (False, None)
    if not ok or not isinstance(opt_node, DictConfig) or "_target_" not in opt_node:
        return
    import torch

    from models.module import configured_call
    from models.specs import factory as spec_factory

    try:
        factory = spec_factory(opt_node)
    except Exception as exc:  # noqa: BLE001 - an unknown class or argument
        raise _error("model.optimizer", _cause_line(exc)) from exc
    opt = _configured(configured_call, factory, ([torch.nn.Parameter(torch.zeros(1))],), "model.optimizer")
    ok, sched_node = _get(model, "scheduler") if "scheduler" in model else (False, None)
    if ok and isinstance(sched_node, DictConfig) and "_target_" in sched_node:
        try:
            scheduler = spec_factory(sched_node)
        except Exception as exc:  # noqa: BLE001
            raise _error("model.scheduler", _cause_line(exc)) from exc
        _configured(configured_call, scheduler, (opt,), "model.scheduler")


def _configured(call: Any, factory: Any, args: tuple, key: str) -> Any:
    try:
        return call(factory, args, key)
    except ValueError as exc:  # it names the key already
        from app.errors import ConfigError

        raise ConfigError(str(exc)) from None


def _cause_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split())
