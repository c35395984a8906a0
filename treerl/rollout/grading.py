"""Grade sampled reasoning trees: every leaf's root-to-leaf text through the task's verifier, then
back up."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Grade, Problem, Task


def grade_tree(
    tree: ReasoningTree, problem: Problem, task: Task, tokenizer: PreTrainedTokenizerBase
) -> list[Grade]:
    """Set each leaf's reward and correctness, back the values up, and return the grades in leaf
    order."""
    leaves = tree.leaves()
    grades = [
        task.grade(
            tokenizer.decode(tree.text_ids(path), skip_special_tokens=True), problem.reference
        )
        for path, _ in leaves
    ]
    for (_, leaf), grade in zip(leaves, grades):
        leaf.reward, leaf.correct = grade.reward, grade.correct
    tree.backup()
    return grades


def grade_trees(
    trees: list[ReasoningTree],
    problems: list[Problem],
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
) -> list[list[Grade]]:
    """grade_tree for each tree and its problem."""
    return [grade_tree(tree, problem, task, tokenizer) for tree, problem in zip(trees, problems)]
