"""Name -> value tables (advantage estimators, level schedules, tasks, templates, ...), each named
by the config key whose values are its names: one error for an unknown name, and a name
registered twice is refused.

`REGISTRIES` lists every registry by its config key, so that a config's names can be checked against
them (treerl.names) and the docs and tests can follow them.

A registry made with `user_code=True` also takes `MODULE:NAME`, an object of the user's own code:
MODULE is an importable module name or a path to a `.py` file. `check` accepts any such value and
`lookup` imports it; that is the one rule for user code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from treerl.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def __init__(self, config_key: str, extra: tuple[str, ...] = (), user_code: bool = False):
        """`extra`: names the config key also takes that are not entries
        (reschedule.rank_by's `off`); `user_code`: the key also takes `MODULE:NAME`."""
        super().__init__()
        self.config_key, self.extra, self.user_code = config_key, extra, user_code
        if config_key in REGISTRIES:
            raise ValueError(f"a registry for {config_key} exists already")
        REGISTRIES[config_key] = self

    def add(self, name: str, value: T) -> T:
        if name in self or name in self.extra:
            raise ValueError(f"{self.config_key} '{name}' is registered already")
        self[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the function under `name`."""
        return lambda fn: self.add(name, fn)

    def names(self) -> list[str]:
        """Every name the config key takes."""
        return sorted([*self, *self.extra])

    def check(self, name: Any) -> None:
        if self.user_code and is_user_code(name):
            return
        if not isinstance(name, str) or (name not in self and name not in self.extra):
            own = ", or MODULE:NAME from your own code" if self.user_code else ""
            raise UserError(
                f"unknown {self.config_key} '{name}'; available: {', '.join(self.names())}{own}"
            )

    def lookup(self, name: str) -> T:
        self.check(name)
        if self.user_code and is_user_code(name):
            return load_user_code(name, self.config_key)
        return self[name]


REGISTRIES: dict[str, Registry[Any]] = {}
"""Every registry by its config key (filled as the modules that define them are imported)."""


def keyword_params(fn: Callable, fixed: int) -> dict[str, inspect.Parameter]:
    """The parameters of fn after its first `fixed` (those the caller always passes)."""
    return dict(list(inspect.signature(fn).parameters.items())[fixed:])


def param_defaults(fn: Callable, fixed: int) -> dict[str, Any]:
    return {
        name: p.default for name, p in keyword_params(fn, fixed).items() if p.default is not p.empty
    }


def check_params(
    config_key: str, owner: str, fn: Callable, params: Mapping[str, Any], fixed: int
) -> None:
    """A UserError when `params` (the dict under `config_key`) names a
    parameter fn does not take."""
    accepted = list(keyword_params(fn, fixed))
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"{config_key}: {owner} has no parameter '{unknown[0]}'; it takes: "
            f"{', '.join(accepted) or 'none'}"
        )


def check_names(config: Mapping[str, Any]) -> None:
    """A UserError when a config value under a registry's key (config: the config as nested dicts)
    is not one of its names. Registries whose modules are not imported yet are not checked here
    (treerl.commands imports all)."""
    for key, registry in REGISTRIES.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            registry.check(value)


def is_user_code(value: Any) -> bool:
    """Whether a config value names user code: `MODULE:NAME`, where MODULE is a dotted module
    name or a path ending in `.py` and NAME an identifier."""
    if not isinstance(value, str):
        return False
    module, sep, name = value.rpartition(":")
    dotted = all(part.isidentifier() for part in module.split("."))
    return bool(sep) and name.isidentifier() and (module.endswith(".py") or dotted)


def absolute_user_code(value: Any) -> Any:
    """`path.py:NAME` with the path made absolute (a run records where the file is, so that a
    resume from elsewhere finds it); any other value unchanged."""
    if not is_user_code(value) or not value.rpartition(":")[0].endswith(".py"):
        return value
    module, _, name = value.rpartition(":")
    return f"{Path(module).expanduser().resolve()}:{name}"


def load_user_code(value: str, config_key: str) -> Any:
    """The object `MODULE:NAME` names: a module name is imported as Python imports it, with the
    current directory on the path; a `.py` file is loaded as Python runs a script, its folder on
    the path. A failure is a UserError naming the key."""
    module_name, _, name = value.rpartition(":")
    module = user_module(module_name, config_key)
    if not hasattr(module, name):
        raise UserError(f"{config_key}={value}: {module_name} has no '{name}'")
    return getattr(module, name)


def user_module(module_name: str, config_key: str) -> ModuleType:
    """The user's module, imported once per process."""
    try:
        if module_name.endswith(".py"):
            return module_from_file(Path(module_name).expanduser().resolve(), config_key)
        on_path(os.getcwd())
        return importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as error:  # the user's module failed to import: its error, in one line
        what = " ".join(f"{type(error).__name__}: {error}".split())
        hint = (
            "; run from the folder that holds it, or give its .py path"
            if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]
            else ""
        )
        raise UserError(f"{config_key}: importing {module_name} failed ({what}{hint})") from None


def module_from_file(path: Path, config_key: str) -> ModuleType:
    if not path.is_file():
        raise UserError(f"{config_key}: {path} is not a file")
    name = f"treerl_user_code_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py path always has a spec
    module = importlib.util.module_from_spec(spec)
    on_path(str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def on_path(folder: str) -> None:
    """Put a folder at the end of the import path (after everything installed) unless it is
    there."""
    if folder not in sys.path:
        sys.path.append(folder)
