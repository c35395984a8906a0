"""treerl: RL from verifiable rewards where every rollout is a reasoning tree.

The Python API (docs/api.md), imported on first use so that `import treerl` stays light:

    from treerl import load_config, train, evaluate, generate, sample_trees, score
"""

import os
import sys
from types import ModuleType
from typing import Any

# Models and datasets come from local paths or the local Hugging Face cache; nothing is downloaded
# at run time. Set before transformers or datasets is imported; export HF_HUB_OFFLINE=0 (or set
# model.allow_download=true) to allow downloads anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"

API = ("load_config", "train", "evaluate", "generate", "sample_trees", "score")
"""The functions of treerl.api that `from treerl import ...` gives."""
__all__ = ["ReasoningTree", *API]


class TrainPackage(ModuleType):
    """The package treerl.train, callable as the API's `train`. The two share a name, and Python
    sets `treerl.train` to the package whenever the package is imported; so the package itself
    trains when called, and `import treerl.train.trainer` still finds its modules."""

    def __call__(self, cfg: Any, out: Any = None, resume: bool = False) -> Any:
        """treerl.api.train: train as `treerl train` does and return the run directory."""
        from treerl.api import train

        return train(cfg, out, resume)


class Treerl(ModuleType):
    """The package treerl, whose subpackage `train` is made callable when it is imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and type(value) is ModuleType:
            value.__class__ = TrainPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = Treerl


def __getattr__(name: str) -> Any:
    """`treerl.ReasoningTree` and the API's functions, each imported on first use."""
    if name == "ReasoningTree":
        from treerl.rollout.tree import ReasoningTree

        return ReasoningTree
    if name in API:
        from treerl import api

        return sys.modules["treerl.train"] if name == "train" else getattr(api, name)
    raise AttributeError(f"module 'treerl' has no attribute '{name}'")
