"""Grade sampled reasoning trees: every leaf's root-to-leaf text through the task's verifier (or
the user's reward functions, all leaves of a call in one batch), then back up."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Completions, Grade, Problem, Task


def grade_trees(
    trees: list[ReasoningTree],
    problems: list[Problem],
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
) -> list[list[Grade]]:
    """Set each leaf's reward and correctness, back each tree's values up, and return the grades
    of each tree in leaf order."""
    leaves = [tree.leaves() for tree in trees]
    owners = [i for i, tree_leaves in enumerate(leaves) for _ in tree_leaves]
    prompts = [tokenizer.decode(tree.prompt_ids) for tree in trees]
    ids = [
        tree.text_ids(path) for tree, tree_leaves in zip(trees, leaves) for path, _ in tree_leaves
    ]
    grades = iter(
        task.grade_all(
            Completions(
                [prompts[i] for i in owners],
                [tokenizer.decode(text, skip_special_tokens=True) for text in ids],
                ids,
                [problems[i] for i in owners],
            )
        )
    )
    graded = [[next(grades) for _ in tree_leaves] for tree_leaves in leaves]
    for tree, tree_leaves, tree_grades in zip(trees, leaves, graded):
        for (_, leaf), grade in zip(tree_leaves, tree_grades):
            leaf.reward, leaf.correct = grade.reward, grade.correct
        tree.backup()
    return graded
