"""treerl: RL from verifiable rewards where every rollout is a reasoning tree."""

import os

# Models and datasets come from local paths or the local Hugging Face cache; nothing is downloaded
# at run time. Set before transformers or datasets is imported; export HF_HUB_OFFLINE=0 to
# allow downloads anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"

__all__ = ["ReasoningTree"]


def __getattr__(name: str):
    """`treerl.ReasoningTree`, imported on first use so that `import treerl` stays light."""
    if name == "ReasoningTree":
        from treerl.rollout.tree import ReasoningTree

        return ReasoningTree
    raise AttributeError(f"module 'treerl' has no attribute '{name}'")
