"""treerl: RL from verifiable rewards where every rollout is a reasoning tree."""

__version__ = "0.1.0"
