"""Grade a sampled reasoning tree: every leaf's root-to-leaf text through the task's verifier, then back up."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from treerl.rollout.tree import ReasoningTree
from treerl.tasks.base import Grade, Problem, Task


def grade_tree(tree: ReasoningTree, problem: Problem, task: Task, tokenizer: PreTrainedTokenizerBase) -> list[Grade]:
    """Set each leaf's reward and correctness, back the values up, and return the grades in leaf order."""
    leaves = tree.leaves()
    grades = [task.grade(tokenizer.decode(tree.text_ids(path), skip_special_tokens=True), problem.reference)
              for path, _ in leaves]
    for (_, leaf), grade in zip(leaves, grades):
        leaf.reward, leaf.correct = grade.reward, grade.correct
    tree.backup()
    return grades
