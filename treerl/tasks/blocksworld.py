"""Blocksworld planning (PlanBench style, as in the E2H Reasoner paper); the level is the optimal
plan length.

    trivial 1, easy 2, medium 4, hard 6, ood 8 (evaluation only)

A state maps each block to its support: "table", another block, or "hand" (at most one block is
held). Four actions, one step each: pick up X (on the table, clear, hand empty), put down X (held),
stack X on Y (X held, Y clear), unstack X from Y (X on Y, X clear, hand empty). Every action flips
the hand between empty and holding, so odd lengths end holding a block: the goal is the full final
state.

A problem's reference is `{"initial": state, "goal": state, "optimal_length": L}`; a plan is correct
when it is legal from the initial state and ends exactly at the goal. Held-out problems are a fixed
tenth of all (initial, goal) pairs (by hash), so training never sees them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from treerl.errors import UserError
from treerl.tasks.base import Problem, Task, register_task
from treerl.tasks.extract import final_answer

PLAN_LENGTH = {"trivial": 1, "easy": 2, "medium": 4, "hard": 6, "ood": 8}
COLOURS = [
    "red",
    "blue",
    "orange",
    "yellow",
    "white",
    "magenta",
    "black",
    "cyan",
    "green",
    "violet",
]
MIN_BLOCKS, MAX_BLOCKS = 3, 6
WALKS_PER_STATE = 30
DRAWS_PER_EVAL_PROBLEM = 20
MAX_PLAN_LINES, MAX_LINE_CHARS = 100, 200
TABLE, HAND = "table", "hand"
VERBS = {"pickup": "pick up", "putdown": "put down", "stack": "stack", "unstack": "unstack"}
NAME = re.compile(r"[a-z][a-z0-9_]*")
STEP = re.compile(
    r"(?:(?:step\s*)?\d{1,3}\s*[.):]?|[-*])?\s*\(?\s*"
    r"(pick[-_\s]?up|put[-_\s]?down|unstack|stack)\s+(?:the\s+)?(\w+)"
    r"(?:\s+block)?(?:\s+(?:(?:(?:from\s+)?on\s+top\s+of|from|onto|on)\s+)?"
    r"(?:the\s+)?(\w+)(?:\s+block)?)?\s*\)?\s*\.?",
    re.IGNORECASE,
)
SHAPE = (
    "expected {'initial': {block: support}, 'goal': {block: support}, 'optimal_length': int >= 1} "
    "with the same lowercase block names in both, "
    "each support 'table', 'hand' or another block, no cycles"
)

State = dict[str, str]
Key = tuple[str, ...]
"""A state as its supports, in a fixed block order (for BFS)."""
Action = tuple[str, str, str | None]
"""(verb, block, other block or None); verb is one of 'pick up', 'put down', 'stack', 'unstack'."""


def say(action: Action) -> str:
    verb, x, y = action
    if verb == "stack":
        return f"stack the {x} block on top of the {y} block"
    if verb == "unstack":
        return f"unstack the {x} block from on top of the {y} block"
    return f"{verb} the {x} block"


def clear(state: State, block: str) -> bool:
    return state[block] != HAND and block not in state.values()


def apply(state: State, action: Action) -> bool:
    """Do the action in place when it is legal; False (and the state unchanged) when it is not."""
    verb, x, y = action
    hand_empty = HAND not in state.values()
    if verb == "pick up":
        legal, support = state[x] == TABLE and clear(state, x) and hand_empty, HAND
    elif verb == "put down":
        legal, support = state[x] == HAND, TABLE
    elif verb == "stack":
        assert y is not None  # stack names the block below (parse_plan and moves give it)
        legal, support = state[x] == HAND and x != y and clear(state, y), y
    else:
        legal, support = state[x] == y and clear(state, x) and hand_empty, HAND
    if legal:
        state[x] = support
    return legal


def moves(blocks: Key, state: Key) -> Iterator[tuple[Action, Key]]:
    """The legal actions from a state and the states they lead to."""
    below = set(state)
    free = [i for i, b in enumerate(blocks) if state[i] != HAND and b not in below]
    if HAND not in below:
        for i in free:
            verb = "pick up" if state[i] == TABLE else "unstack"
            yield (
                (verb, blocks[i], None if state[i] == TABLE else state[i]),
                state[:i] + (HAND,) + state[i + 1 :],
            )
        return
    held = state.index(HAND)
    yield ("put down", blocks[held], None), state[:held] + (TABLE,) + state[held + 1 :]
    for i in free:
        yield ("stack", blocks[held], blocks[i]), state[:held] + (blocks[i],) + state[held + 1 :]


def distances(blocks: Key, start: Key, depth: int) -> dict[Key, int]:
    """BFS: every state within `depth` actions of `start`, with its distance."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if dist[state] < depth:
            for _, after in moves(blocks, state):
                if after not in dist:
                    dist[after] = dist[state] + 1
                    queue.append(after)
    return dist


def shortest_plan(initial: State, goal: State) -> list[Action] | None:
    """A shortest plan from initial to goal (BFS), or None when the goal cannot be reached."""
    blocks = tuple(sorted(initial))
    start, end = tuple(initial[b] for b in blocks), tuple(goal[b] for b in blocks)
    parent: dict[Key, tuple[Key, Action] | None] = {start: None}
    queue = deque([start])
    while queue and end not in parent:
        state = queue.popleft()
        for action, after in moves(blocks, state):
            if after not in parent:
                parent[after] = (state, action)
                queue.append(after)
    if end not in parent:
        return None
    plan, state = [], end
    while (step := parent[state]) is not None:
        state, action = step
        plan.append(action)
    return plan[::-1]


def random_state(blocks: Key, rng: random.Random) -> State:
    """Blocks dropped in random order, each on the table or on top of a random stack; hand empty."""
    tops: list[str] = []
    state: State = {}
    for block in rng.sample(blocks, len(blocks)):
        i = rng.randrange(len(tops) + 1)
        state[block] = tops[i] if i < len(tops) else TABLE
        tops[i : i + 1] = [block]
    return {b: state[b] for b in blocks}


def outward_walk(
    blocks: Key, start: Key, dist: dict[Key, int], length: int, rng: random.Random
) -> tuple[list[Action], Key] | None:
    """A random walk of legal actions, each one BFS layer further out: a shortest plan to where it
    ends."""
    plan, state = [], start
    for step in range(length):
        options = [(a, s) for a, s in moves(blocks, state) if dist.get(s) == step + 1]
        if not options:
            return None
        action, state = rng.choice(options)
        plan.append(action)
    return plan, state


def is_held_out(initial: State, goal: State) -> bool:
    key = json.dumps([sorted(initial.items()), sorted(goal.items())])
    return hashlib.sha1(key.encode()).digest()[0] % 10 == 0


def facts(state: State) -> list[str]:
    """Where every block is, in words, then the hand."""
    held = [b for b, s in state.items() if s == HAND]
    where = [
        f"the {b} block is on the table"
        if s == TABLE
        else f"the {b} block is on top of the {s} block"
        for b, s in state.items()
        if s != HAND
    ]
    return where + [f"I am holding the {held[0]} block" if held else "the hand is empty"]


def sentence(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def stacks(state: State) -> str:
    """Compact stacks, top block first: 'red on blue on the table; holding orange'."""
    above = {s: b for b, s in state.items() if s not in (TABLE, HAND)}
    towers = []
    for bottom in (b for b, s in state.items() if s == TABLE):
        tower = [bottom]
        while tower[-1] in above:
            tower.append(above[tower[-1]])
        towers.append(" on ".join(tower[::-1]) + " on the table")
    held = [b for b, s in state.items() if s == HAND]
    return "; ".join(towers + [f"holding {held[0]}" if held else "hand empty"])


RULES = """I am playing with a set of blocks where I need to arrange the blocks into stacks. \
Here are the actions I can do:
Pick up a block
Unstack a block from on top of another block
Put down a block
Stack a block on top of another block

I have the following restrictions on my actions:
I can only pick up or unstack one block at a time, and only if my hand is empty.
I can only pick up a block if it is on the table and clear. A block is clear if no other block \
is on top of it and it is not picked up.
I can only unstack a block from on top of another block if it really is on top of that block \
and it is clear.
Once I pick up or unstack a block, I am holding it.
I can only put down a block that I am holding.
I can only stack a block on top of another block if I am holding the first block and the second \
one is clear.
Once I put down or stack a block, my hand becomes empty. A block with a block stacked on it \
is not clear."""


def question(initial: State, goal: State) -> str:
    clear_facts = [f"the {b} block is clear" for b in initial if clear(initial, b)]
    where = facts(initial)
    start = clear_facts + where[-1:] + where[:-1]
    return (
        f"{RULES}\n\n[STATEMENT]\nAs initial conditions I have that, {sentence(start)}.\n"
        f"My goal is to have that {sentence(facts(goal))}.\n\n"
        "Write the plan, one action per line, using: pick up the X block / put down the X block / "
        "stack the X block on top of the Y block / unstack the X block from on top of the Y block."
    )


def make_problem(level: str, initial: State, goal: State, plan: list[Action]) -> Problem:
    steps = len(plan)
    think = (
        f"Now: {stacks(initial)}. Goal: {stacks(goal)}. "
        f"A shortest plan takes {steps} action{'s' if steps > 1 else ''}."
    )
    solution = f"<think>{think}</think>\n<answer>\n" + "\n".join(map(say, plan)) + "\n</answer>"
    reference = {"initial": initial, "goal": goal, "optimal_length": steps}
    return Problem(
        question=question(initial, goal), reference=reference, level=level, solution=solution
    )


def generate(level: str, rng: random.Random, held_out: bool) -> Problem:
    """A problem whose optimal plan has the level's length, held out or not as asked."""
    length = PLAN_LENGTH[level]
    while True:
        names = rng.sample(COLOURS, rng.randint(MIN_BLOCKS, MAX_BLOCKS))
        blocks = tuple(sorted(names, key=COLOURS.index))
        initial = random_state(blocks, rng)
        start = tuple(initial.values())
        dist = distances(blocks, start, length)
        for _ in range(WALKS_PER_STATE):
            walk = outward_walk(blocks, start, dist, length, rng)
            if walk is None:
                continue
            plan, end = walk
            goal = dict(zip(blocks, end))
            if is_held_out(initial, goal) == held_out:
                return make_problem(level, initial, goal, plan)


def malformed(why: str) -> UserError:
    return UserError(f"malformed blocksworld reference: {why}; {SHAPE}")


def check_state(name: str, state: Any) -> None:
    if not isinstance(state, dict) or not state:
        raise malformed(f"'{name}' is not a non-empty dict")
    for block, support in state.items():
        if not isinstance(block, str) or not NAME.fullmatch(block) or block in (TABLE, HAND):
            raise malformed(f"'{name}' has a bad block name {block!r}")
        if not isinstance(support, str) or support not in (TABLE, HAND, *state) or support == block:
            raise malformed(
                f"in '{name}', {block!r} rests on {support!r}, "
                "not the table, the hand or another block"
            )
    supports = [s for s in state.values() if s != TABLE]
    if len(supports) != len(set(supports)):
        raise malformed(f"in '{name}', two blocks are held or rest on the same block")
    for block in state:
        below = block
        for _ in range(len(state)):
            below = state.get(below, below)
        if below in state:
            raise malformed(f"'{name}' has a cycle through {block!r}")


def check_reference(reference: Any) -> tuple[State, State, int]:
    """The reference's (initial, goal, optimal_length), or a UserError stating the expected
    shape."""
    if (
        not isinstance(reference, dict)
        or not {"initial", "goal", "optimal_length"} <= reference.keys()
    ):
        raise malformed("missing keys")
    initial, goal, length = reference["initial"], reference["goal"], reference["optimal_length"]
    check_state("initial", initial)
    check_state("goal", goal)
    if set(goal) != set(initial):
        raise malformed("the goal's blocks differ from the initial state's")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise malformed(f"optimal_length is {length!r}")
    return initial, goal, length


def parse_plan(text: str, state: State) -> list[Action] | None:
    """The actions of a plan, one per non-empty line; None when a line is not an action on known
    blocks."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_PLAN_LINES or any(len(line) > MAX_LINE_CHARS for line in lines):
        return None
    plan = []
    for line in lines:
        match = STEP.fullmatch(line)
        if match is None:
            return None
        verb = VERBS[re.sub(r"[-_\s]", "", match[1].lower())]
        x, y = match[2].lower(), match[3] and match[3].lower()
        if verb in ("pick up", "put down") and y == TABLE:
            y = None
        if (
            x not in state
            or (y is None) != (verb in ("pick up", "put down"))
            or (y is not None and y not in state)
        ):
            return None
        plan.append((verb, x, y))
    return plan


class Blocksworld(Task):
    """Plan to reach a goal state; the level is the optimal plan length, credit by simulating the
    plan."""

    name = "blocksworld"
    default_template = "think"
    levels = list(PLAN_LENGTH)
    eval_only_levels = ["ood"]

    def __init__(
        self,
        format_reward: float = 0.0,
        template: str | None = None,
        format_required: bool = False,
        plan_shaping: str | None = None,
        system_prompt: str | None = None,
    ):
        """plan_shaping, for a correct plan of length v above the optimum n: `e2h` earns
        (1 + n/v) / 2 (the E2H code's 1 + n/v out of 2), `ratio` n/v; None: full credit."""
        super().__init__(format_reward, template, format_required, system_prompt)
        if plan_shaping not in PLAN_SHAPING:
            raise UserError(f"task.plan_shaping: '{plan_shaping}' is not e2h or ratio")
        self.plan_shaping = plan_shaping

    def _check_level(self, level: str) -> None:
        if level not in PLAN_LENGTH:
            raise UserError(
                f"unknown blocksworld level '{level}'; levels: {', '.join(PLAN_LENGTH)}"
            )

    def sample(self, level: str, rng: random.Random) -> Problem:
        self._check_level(level)
        return generate(level, rng, held_out=False)

    def eval_problems(self, level: str, n: int) -> list[Problem]:
        """The first n distinct held-out problems of a fixed stream; n must be positive (problems
        are synthetic)."""
        self._check_level(level)
        if n <= 0:
            raise UserError(
                "blocksworld problems are generated: ask for a positive number of eval problems, "
                f"not {n}"
            )
        rng = random.Random(f"blocksworld-eval-{level}")
        seen: dict[str, Problem] = {}
        for _ in range(DRAWS_PER_EVAL_PROBLEM * n):
            if len(seen) == n:
                break
            problem = generate(level, rng, held_out=True)
            seen.setdefault(problem.question, problem)
        return list(seen.values())

    def judge(self, completion: str, reference: Any) -> tuple[bool, float]:
        """Simulate the plan in the final answer from the initial state; correct when it ends at the
        goal."""
        initial, goal, optimal = check_reference(reference)
        plan = parse_plan(final_answer(completion) or "", initial)
        if not plan:
            return False, 0.0
        state = dict(initial)
        if not all(apply(state, action) for action in plan) or state != goal:
            return False, 0.0
        return True, PLAN_SHAPING[self.plan_shaping](min(1.0, optimal / len(plan)))


PLAN_SHAPING = {
    None: lambda ratio: 1.0,
    "ratio": lambda ratio: ratio,
    "e2h": lambda ratio: (1.0 + ratio) / 2,
}
"""The credit of a correct plan from optimal / length (1 for an optimal plan): by Blocksworld's
plan_shaping."""

register_task("blocksworld")(Blocksworld)
