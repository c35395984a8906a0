"""Name -> value tables (advantage estimators, level schedules, tasks, templates, ...), each named
by the config key whose values are its names: one error for an unknown name, and a name
registered twice is refused.

`REGISTRIES` lists every registry by its config key, so that a config's names can be checked against
them (treerl.names) and the docs and tests can follow them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from treerl.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def __init__(self, config_key: str, extra: tuple[str, ...] = ()):
        """`extra`: names the config key also takes that are not entries
        (reschedule.rank_by's `off`)."""
        super().__init__()
        self.config_key, self.extra = config_key, extra
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
        if not isinstance(name, str) or (name not in self and name not in self.extra):
            raise UserError(
                f"unknown {self.config_key} '{name}'; available: {', '.join(self.names())}"
            )

    def lookup(self, name: str) -> T:
        self.check(name)
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
