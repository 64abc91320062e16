"""Read PyTorch / Lightning pickle files (``.ckpt``, ``.pt``) without executing anything.

A pickle is a small program: loading one with :mod:`pickle` or a plain ``torch.load`` may call any
importable function (``os.system``, ``builtins.exec``...). The released CrystalFlow model folders
hold such files (the Lightning checkpoint and the pickled condition scalers), so they are read here
by a restricted unpickler:

* every global the pickle names is looked up in a short allow-list of **our own** functions that
  rebuild tensors and plain containers (``torch._utils._rebuild_tensor_v2`` and friends are
  re-implemented here; nothing of torch's is called with the pickle's arguments);
* any other global (``omegaconf.DictConfig``, the reference's ``StandardScalerTorch``, but also
  ``os.system``) becomes an :class:`InertObject`: a record of its name, the arguments the pickle
  would have passed and the state it would have set, never imported, never called;
* the ``BUILD`` opcode only fills inert objects and plain dicts; tensor storages are read from the
  zip archive's records into fresh buffers (little-endian only).

Only the zip format that ``torch.save`` writes since PyTorch 1.6 is read; the older stream format is
refused in one line.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from crystalflow.errors import CheckpointError

__all__ = ["InertObject", "load_torch_file", "safe_loads"]

#: Largest archive record read (bytes); a paper-size model is ~ 100 MB.
MAX_RECORD_BYTES = 8 << 30

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class InertObject:
    """Stand-in for a global that is not on the allow-list: it records, it never runs.

    Attributes
    ----------
    module, name : str
        The global the pickle named (class attributes of the per-global subclass).
    args : tuple
        What the pickle would have passed to it.
    state : Any
        What the pickle would have given to ``__setstate__`` (usually the instance ``__dict__``).
    """

    module = "?"
    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "kwargs", kwargs)
        object.__setattr__(obj, "state", None)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D107 - arguments recorded
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    @classmethod
    def qualname(cls) -> str:
        return f"{cls.module}.{cls.name}"

    def __repr__(self) -> str:
        return f"<inert {self.qualname()}>"

    def attrs(self) -> dict[str, Any]:
        """The object's would-be attributes (its state as a dict, else {})."""
        st = self.state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict | type(None)):
            st = {**(st[0] or {}), **(st[1] or {})}  # (dict state, slot state)
        return dict(st) if isinstance(st, dict) else {}


_INERT_CLASSES: dict[tuple[str, str], type[InertObject]] = {}


def _inert_class(module: str, name: str) -> type[InertObject]:
    key = (module, name)
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = type(
            f"Inert[{module}.{name}]", (InertObject,), {"module": module, "name": name}
        )
    return _INERT_CLASSES[key]


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """The flat tensor of one archive record."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


def _as_int_tuple(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, tuple | list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in v
    ):
        raise pickle.UnpicklingError(f"tensor {what} is not a tuple of integers")
    return tuple(int(x) for x in v)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage record")
    if not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("bad tensor storage offset")
    size_t = _as_int_tuple(size, "size")
    stride_t = _as_int_tuple(stride, "stride")
    if len(size_t) != len(stride_t) or any(s < 0 for s in size_t + stride_t):
        raise pickle.UnpicklingError("bad tensor size/stride")
    n = storage.flat.numel()
    last = offset + sum((s - 1) * st for s, st in zip(size_t, stride_t)) if all(size_t) else offset
    if all(size_t) and last >= n:
        raise pickle.UnpicklingError("tensor reaches past its storage")
    return torch.as_strided(storage.flat, size_t, stride_t, offset).clone()


def _rebuild_parameter(data: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func not in _SAFE_FUNCS or not isinstance(args, tuple):
        raise pickle.UnpicklingError("tensor rebuilt by a function that is not allowed")
    return func(*args)


def _ordered_dict(*args: Any) -> OrderedDict:
    if args and not isinstance(args[0], list | tuple | dict):
        raise pickle.UnpicklingError("OrderedDict from a non-container")
    return OrderedDict(*args[:1])


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _as_int_tuple(args[0] if args else (), "size")


_SAFE_FUNCS = {_rebuild_tensor, _rebuild_parameter, _rebuild_from_type_v2}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _torch_size,
}
for _name in _STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)
    _ALLOWED[("torch.storage", _name)] = _StorageType(_name)
_ALLOWED[("__builtin__", "dict")] = _ALLOWED[("builtins", "dict")] = dict
_ALLOWED[("__builtin__", "list")] = _ALLOWED[("builtins", "list")] = list
_ALLOWED[("__builtin__", "set")] = _ALLOWED[("builtins", "set")] = set
_ALLOWED[("__builtin__", "frozenset")] = _ALLOWED[("builtins", "frozenset")] = frozenset
_ALLOWED[("__builtin__", "long")] = int


def _checked_builtin(f: Any) -> Any:
    """dict/list/set/int called by the pickle only on plain data (never an iterator of inert or
    arbitrary objects that could run code)."""

    def call(*args: Any) -> Any:
        for a in args:
            if not isinstance(a, int | float | str | bytes | list | tuple | dict | set | frozenset):
                raise pickle.UnpicklingError(f"{f.__name__}() of a {type(a).__name__}")
        return f(*args)

    return call


for _k, _v in list(_ALLOWED.items()):
    if _v in (dict, list, set, frozenset, int):
        _ALLOWED[_k] = _checked_builtin(_v)


class _SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]  # the pure-Python one
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, records: dict[str, Any] | None) -> None:
        super().__init__(io.BytesIO(data))
        self._records = records
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        return _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if (
            not isinstance(pid, tuple)
            or len(pid) < 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
        ):
            raise pickle.UnpicklingError("unsupported persistent id (not a tensor storage)")
        if self._records is None:
            raise pickle.UnpicklingError("a tensor storage outside an archive")
        stype, key = pid[1], pid[2]
        if key not in self._storages:
            read = self._records.get(key)
            if read is None:
                raise pickle.UnpicklingError(f"storage record {key!r} is missing")
            raw = bytearray(read())
            itemsize = torch.empty((), dtype=stype.dtype).element_size()
            if len(raw) % itemsize:
                raise pickle.UnpicklingError(f"storage record {key!r} has a partial element")
            flat = (
                torch.frombuffer(raw, dtype=stype.dtype)
                if raw
                else torch.empty(0, dtype=stype.dtype)
            )
            self._storages[key] = _Storage(flat)
        return self._storages[key]

    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, InertObject):
            inst.__setstate__(state)
        elif isinstance(inst, dict):
            pass  # instance attributes of a dict (an OrderedDict's ``_metadata``): not kept
        else:
            raise pickle.UnpicklingError(
                f"refusing to set the state of a {type(inst).__name__} (only inert records)"
            )

    dispatch[pickle.BUILD[0]] = load_build


def safe_loads(data: bytes, records: dict[str, Any] | None = None) -> Any:
    """Unpickle ``data`` with the restricted unpickler (see the module docs)."""
    return _SafeUnpickler(data, records).load()


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """Read a ``torch.save`` zip archive (``.pt``, Lightning ``.ckpt``) without executing it.

    Tensors come back as CPU tensors; any global outside the allow-list is an
    :class:`InertObject`. Raises :class:`~crystalflow.errors.CheckpointError` (one line) for a
    missing, legacy-format, big-endian, corrupt or refused file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{what} {path}: not a torch zip archive (a legacy torch.save stream or a plain "
            "pickle): refused, it cannot be read without running it; re-save it with "
            "torch >= 1.6 in an environment you trust"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkl) != 1:
                raise CheckpointError(f"{what} {path}: no single data.pkl in the archive")
            prefix = pkl[0].filename[: -len("data.pkl")]
            for i in infos:
                if i.file_size > MAX_RECORD_BYTES:
                    raise CheckpointError(
                        f"{what} {path}: record {i.filename} claims {i.file_size} bytes (refused)"
                    )
            order = {i.filename: i for i in infos}
            bo = order.get(prefix + "byteorder")
            if bo is not None and zf.read(bo).strip() not in (b"little", b""):
                raise CheckpointError(f"{what} {path}: big-endian archive (not supported)")
            records = {
                name[len(prefix + "data/") :]: (lambda n=name: zf.read(n))
                for name in order
                if name.startswith(prefix + "data/")
            }
            return safe_loads(zf.read(pkl[0]), records)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            MemoryError) as exc:  # fmt: skip
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{what} {path}: unreadable or refused pickle ({first})") from None
