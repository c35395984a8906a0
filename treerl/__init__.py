"""treerl: RL from verifiable rewards where every rollout is a reasoning tree.

The Python API (docs/api.md), imported on first use so that `import treerl` stays light:

    from treerl import load_config, train, evaluate, generate, sample_trees, score
"""

import os
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


def __getattr__(name: str) -> Any:
    """`treerl.ReasoningTree` and the API's functions, each imported on first use."""
    if name == "ReasoningTree":
        from treerl.rollout.tree import ReasoningTree

        return ReasoningTree
    if name in API:
        from treerl import api

        return getattr(api, name)
    raise AttributeError(f"module 'treerl' has no attribute '{name}'")
