"""What every task gives the trainer: problems with a difficulty level, and a verifier."""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from treerl.registry import Registry
from treerl.tasks.prompts import Turn, render_prompt, template_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_COMPLETION_CHARS = 1 << 16
"""Verifiers read at most this many characters from the end of a completion (answers come last)."""


@dataclass(frozen=True)
class Problem:
    question: str
    """The task text, before a prompt template wraps it."""
    reference: Any
    """What `Task.verify` compares a completion with: a string, or a JSON-like dict for synthetic
    tasks."""
    level: str
    subject: str = ""
    solution: str = ""
    """A worked solution in the task's answer format, where the task has one (used for warm-up)."""
    context: tuple[Turn, ...] = ()
    """A dataset row's conversation before `question`, its last user turn (the row's `messages`):
    (role, content) turns, a system turn among them where the row has one; empty for a plain
    question."""

    @property
    def id(self) -> str:
        """A stable id from the question text (and the turns before it, where it has any): the same
        problem has the same id in every run and file."""
        text = json.dumps([*self.context, self.question]) if self.context else self.question
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grade:
    correct: bool
    """The final answer is right: what accuracy counts."""
    reward: float
    """The reward in [0, 1]: answer credit plus the format reward, when one is configured; with
    reward functions of the user's (task.reward), their weighted sum, any finite float."""
    terms: dict[str, float] = field(default_factory=dict)
    """Each user reward function's value, by the function's name (empty without them)."""


@dataclass(frozen=True)
class Completions:
    """Completions to grade together, each with its prompt's text, its token ids and its
    problem."""

    prompts: list[str]
    texts: list[str]
    ids: list[list[int]]
    problems: list[Problem]


class Rewards(Protocol):
    """Rewards that replace a task's own (tasks.rewards.UserRewards: the user's reward
    functions)."""

    def regrade(self, grades: list[Grade], completions: Completions) -> list[Grade]:
        """The grades with these rewards; `correct` as it was."""
        ...


class Task(ABC):
    """A registered task: levels easiest first, problems per level, and
    `verify(completion, reference)`.

    Subclasses implement `sample`, `eval_problems` and `judge`; the format reward is shared.
    """

    name: ClassVar[str]
    default_template: ClassVar[str]
    if (
        TYPE_CHECKING
    ):  # read-only to Task's users: a subclass sets it (class attribute) or computes it (property)

        @property
        def levels(self) -> list[str]:
            """All levels, easiest first; the ones in `eval_only_levels` are never trained on."""

    eval_only_levels: list[str] = []
    system_prompt: str | None = None
    """The system turn of every prompt ('' for none); None: a row's own, else the template's."""
    user_rewards: Rewards | None = None
    """Reward functions of the user's (task.reward, task.rewards) that replace the reward of
    `grade_all`; `correct` stays the task's verdict."""

    def __init__(
        self,
        format_reward: float = 0.0,
        template: str | None = None,
        format_required: bool = False,
        system_prompt: str | None = None,
    ):
        self.format_reward = format_reward
        self.format_required = format_required
        self.template = template_for(template, self.default_template)
        self.system_prompt = system_prompt

    def prompt(self, problem: Problem, tokenizer: PreTrainedTokenizerBase) -> str:
        """The problem's prompt text as the model reads it (prompts.render_prompt)."""
        return render_prompt(
            self.template, problem.question, tokenizer, problem.context, self.system_prompt
        )

    @abstractmethod
    def sample(self, level: str, rng: random.Random) -> Problem:
        """One training problem of a level; never one of the held-out problems."""

    def train_pool(self, level: str) -> list[Problem] | None:
        """A dataset task's training problems of a level; None for a task that generates them
        without end."""
        return None

    @abstractmethod
    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """The first n held-out problems of a level, the same on every call; n = 0 means all
        (dataset tasks)."""

    @abstractmethod
    def judge(self, completion: str, reference: Any) -> tuple[bool, float]:
        """(correct, answer credit in [0, 1]); bounded in time, never evaluates the text."""

    def grade(self, completion: str, reference: Any) -> Grade:
        """reward = (1 - f) credit + f well-formed, f = format_reward; with format_required, 0 when
        not well formed (E2H: right 1.0, wrong but well formed f, malformed 0). `correct` is the
        answer's, whatever its form."""
        completion = completion[-MAX_COMPLETION_CHARS:]
        correct, credit = self.judge(completion, reference)
        if self.format_reward == 0.0 and not self.format_required:
            return Grade(correct, credit)
        formatted = float(self.template.well_formed(completion))
        if self.format_required and not formatted:
            return Grade(correct, 0.0)
        return Grade(correct, (1.0 - self.format_reward) * credit + self.format_reward * formatted)

    def verify(self, completion: str, reference: Any) -> float:
        """The reward in [0, 1] for a completion."""
        return self.grade(completion, reference).reward

    def grade_all(self, completions: Completions) -> list[Grade]:
        """Each completion's grade; with user reward functions, the reward is theirs."""
        grades = [
            self.grade(text, problem.reference)
            for text, problem in zip(completions.texts, completions.problems)
        ]
        if self.user_rewards is None:
            return grades
        return self.user_rewards.regrade(grades, completions)


TASKS: Registry[type[Task]] = Registry("task.name", user_code=True)
register_task = TASKS.register
