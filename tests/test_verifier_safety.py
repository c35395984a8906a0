"""Adversarial completions against every verifier: no exception escapes, no call outlasts its bound,
nothing runs.

One hypothesis test feeds each generated completion (huge numbers, deep nesting, code payloads,
unbalanced braces, megabyte strings, non-UTF-8 bytes, odd unicode, alone or inside \\boxed{},
<answer> or an answer line) to every registered task's verifier, so each sees at least EXAMPLES
completions. The in-process verifiers run with eval, exec, os.system and subprocess.Popen replaced
by recorders; math and gsm8k run math-verify in a child process, so a sentinel file that every code
payload would create is the check there.
"""

from __future__ import annotations

import builtins
import inspect
import os
import random
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from treerl.tasks import TASKS, get_task
from treerl.tasks.arithmetic import Arithmetic
from treerl.tasks.blocksworld import COLOURS, Blocksworld, say
from treerl.tasks.bounded import BoundedWorker
from treerl.tasks.countdown import Countdown
from treerl.tasks.math_grader import MATH_VERIFY

EXAMPLES = 10_000
MATH_TIMEOUT = 1.0
"""verify_timeout of the math tasks under test."""
MATH_SLACK = 1.5
"""Beyond MATH_TIMEOUT: killing the child after a timeout, restarting it on the next call."""
IN_PROCESS_BOUND = 1.0

SENTINEL = os.path.join(tempfile.gettempdir(), f"treerl-verifier-safety-{uuid.uuid4().hex}")
"""Every code payload below would create this file if anything ran it (nothing creates it
otherwise)."""

# --------------------------------------------------------------------------------------- references

ARITHMETIC_REFS = ["135", "0", "-7", "10"]
MATH_REFS = ["\\frac{14}{3}", "2", "18", "\\sqrt{2}"]
GSM8K_REFS = ["18", "2", "1000000", "0.5"]
COUNTDOWN_REFS = [{"numbers": [3, 41, 7], "target": 20}] + [
    Countdown().sample(level, random.Random(i)).reference
    for i, level in enumerate(["trivial", "easy", "medium"])
]
BLOCKS_PROBLEMS = [
    Blocksworld().sample(level, random.Random(i))
    for i, level in enumerate(["trivial", "easy", "medium", "hard"])
]
BLOCKS_REFS = [p.reference for p in BLOCKS_PROBLEMS]

SOLUTIONS = (
    [p.solution for p in BLOCKS_PROBLEMS]
    + [Countdown().sample("easy", random.Random(i)).solution for i in range(3)]
    + [Arithmetic().sample("easy", random.Random(i)).solution for i in range(3)]
    + [
        "<think>3 + 41 = 44</think>\n<answer>(41 - 3) - 7 - 11</answer>",
        "<answer>41 - 3*7</answer>",
        "Answer: 135",
        "\\boxed{\\frac{14}{3}}",
        "\\boxed{14/3}",
        "#### 18",
        "The answer is $18.00.",
    ]
)

# ----------------------------------------------------------------------------------------- payloads

PAYLOADS = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"exec(\"open('{SENTINEL}', 'w')\")",
    f"eval(\"__import__('os').system('touch {SENTINEL}')\")",
    f"open('{SENTINEL}', 'w').close()",
    f"lambda: __import__('os').system('touch {SENTINEL}')",
    f"(lambda: 0)() or __import__('pathlib').Path('{SENTINEL}').touch()",
    f"__import__('subprocess').call(['touch', '{SENTINEL}'])",
    (
        "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]"
        f"(['touch', '{SENTINEL}'])"
    ),
    f"\\text{{__import__('os').system('touch {SENTINEL}')}}",
    f"\\operatorname{{exec}}(\\text{{open('{SENTINEL}', 'w')}})",
    f"\\mathrm{{eval}}(\"__import__('os').system('touch {SENTINEL}')\")",
    f"1 + __import__('os').system('touch {SENTINEL}')",
    f"x = __import__('os').system('touch {SENTINEL}')",
]

ACTIONS = [
    say(action)
    for action in [
        ("unstack", "red", "blue"),
        ("stack", "blue", "red"),
        ("pick up", "orange", None),
        ("put down", "yellow", None),
        ("stack", "red", "red"),
        ("unstack", "cyan", "hand"),
    ]
]
ACTIONS += [f"{i}. pick up the {c} block" for i, c in enumerate(COLOURS)] + [
    "(stack red blue)",
    "- put down the red block on the table",
    "unstack the __import__ block from on top of the os block",
    "step 999: stack the red block onto the blue block.",
    "pick-up " + "red " * 60,
]

FRAGMENTS = [
    "\\boxed{",
    "\\boxed ",
    "\\fbox{",
    "}",
    "{",
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "Answer:",
    "Answer: ",
    "####",
    "The answer is",
    "the final answer is:",
    "\nA:",
    "(",
    ")",
    "[",
    "]",
    "**",
    "*",
    "+",
    "-",
    "/",
    "^",
    "=",
    "9",
    "99",
    "9" * 20,
    "9" * 400,
    "e999999",
    "e-999",
    ".",
    ",",
    "1,000",
    "\\frac{",
    "\\dfrac{",
    "^{",
    "_{",
    "\\sqrt{",
    "\\text{",
    "\\left(",
    "\\right)",
    "$",
    "\\$",
    "%",
    "\\%",
    "^\\circ",
    "\\infty",
    "\\pi",
    "x",
    "=",
    "\\\\",
    "lambda: 0",
    "exec(",
    "eval(",
    "open(",
    "__import__",
    "import os",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\u2028",
    "\ufeff",
    "\udcff",
    "\U0001f600",
    "14",
    "3",
    "18",
    "20",
    "41",
    "7",
    "135",
    "2",
    "/3",
    "14/3",
    "1.0",
    "-",
    "table",
    "hand",
    "block",
    *PAYLOADS[:3],
    *ACTIONS[:8],
]

# --------------------------------------------------------------------------------------- strategies

SLOW_FOR_SYMPY = [
    "9^{9^{9^{9}}}",
    "10^{10^{10}}",
    "2^{2^{2^{2^{2^{2}}}}}",
    "99999999!",
    "10**10**10",
    "9**9**9**9",
]
"""Answers whose exact value math-verify tries to compute: only the time bound stops them."""

huge_numbers = st.one_of(
    st.integers(1, 6000).map(lambda k: "9" * k),
    st.integers(1, 600).map(lambda k: "1" + "0" * k),
    st.integers(-(10**400), 10**400).map(str),
    st.integers(1, 300).map(lambda k: ",".join(["999"] * k)),
    st.integers(1, 700).map(lambda k: "0." + "0" * k + "1"),
    st.tuples(st.integers(-(10**40), 10**40), st.integers(-(10**40), 10**40)).map(
        lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"
    ),
    st.tuples(st.integers(-(10**40), 10**40), st.integers(-(10**40), 10**40)).map(
        lambda t: f"{t[0]}/{t[1]}"
    ),
    st.sampled_from(
        [
            "9" * 5000,
            "9" * 4301,
            "1e999999",
            "-1e999",
            "1e-999999",
            "1.7976931348623157e309",
            "1e308",
            "\\frac{1}{0}",
            "0/0",
            "1/0",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "\\infty",
            "10^{-10^{10}}",
            "1" + "0" * 308 + ".5",
            "0x" + "f" * 100,
            "1_000_000",
            "١٢٣",
            "１８",
            "\u00bd",
            "²",
        ]
    ),
    st.sampled_from(SLOW_FOR_SYMPY),
)

depth = st.integers(0, 50_000)
small_depth = st.integers(0, 300)
deep_nesting = st.one_of(
    depth.map(lambda n: "(" * n + "1" + ")" * n),
    depth.map(lambda n: "\\boxed{" * n),
    depth.map(lambda n: "\\boxed{" * n + "1" + "}" * n),
    depth.map(lambda n: "{" * n + "}" * (n // 2)),
    depth.map(lambda n: "}" * n + "\\boxed{1}"),
    depth.map(lambda n: "<answer>" * n + "1" + "</answer>" * (n % 3)),
    depth.map(lambda n: "-" * n + "1"),
    depth.map(lambda n: "\\frac{" * n),
    # shallow enough to reach math-verify (answers over 1000 characters never do) and
    # ast.parse (256)
    small_depth.map(lambda n: "(" * n + "2" + ")" * n),
    small_depth.map(lambda n: "\\boxed{" + "{" * n + "2" + "}" * n + "}"),
    small_depth.map(lambda n: "\\boxed{" + "\\frac{1}{" * n + "2" + "}" * n + "}"),
    small_depth.map(lambda n: "\\boxed{" + "\\sqrt{" * n + "4" + "}" * n + "}"),
    small_depth.map(lambda n: "\\boxed{" + "-" * n + "2}"),
    small_depth.map(lambda n: "\\boxed{" + "[" * n + "2" + "]" * n + "}"),
    small_depth.map(lambda n: "<answer>" + "(" * n + "3 + 41 - 7" + ")" * n + "</answer>"),
    small_depth.map(lambda n: "<answer>" + "-" * n + "20</answer>"),
    small_depth.map(lambda n: "<answer>" + "+".join(["1"] * n) + "</answer>"),
)

raw_bytes = st.binary(max_size=300)
non_utf8 = st.one_of(
    raw_bytes.map(lambda b: b.decode("utf-8", "surrogateescape")),
    raw_bytes.map(lambda b: b.decode("latin-1")),
    st.sampled_from(
        [
            b"\\boxed{1\x80}",
            b"Answer: 1\xc3\x28",
            b"\xed\xa0\x80",
            b"<answer>\xff\xfe</answer>",
            b"\\boxed{\xf0\x9f\x98}",
            b"#### 18\x00\xff",
        ]
    ).map(lambda b: b.decode("utf-8", "surrogateescape")),
)

odd_text = st.one_of(
    st.text(),
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]))),  # with lone surrogates
    st.text(
        st.characters(categories=["Co", "Cn", "Cc", "Cf", "Mn", "Me"])
    ),  # private use, unassigned, controls, marks
    st.text(st.characters(categories=["Nd", "No", "Nl", "Sm", "Zs", "Zl", "Zp", "Cc", "Cf"])),
)

fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(FRAGMENTS), st.text(max_size=4)),
    max_size=40,
).map("".join)
action_lines = st.lists(st.sampled_from(ACTIONS), max_size=12).map("\n".join)

atom = st.one_of(
    odd_text,
    fragment_text,
    fragment_text,
    huge_numbers,
    deep_nesting,
    non_utf8,
    st.sampled_from(PAYLOADS),
    st.sampled_from(SOLUTIONS),
    action_lines,
)
candidate = st.one_of(atom, st.lists(atom, min_size=2, max_size=4).map("".join))

CONTEXTS = [
    ("\\boxed{", "}"),
    ("$\\boxed{", "}$"),
    ("\\fbox{", "}"),
    ("\\boxed ", ""),
    ("<answer>", "</answer>"),
    ("<think>Let me think.</think>\n<answer>", "</answer>"),
    ("<think>", "</think><answer>2</answer>"),
    ("Answer: ", ""),
    ("Reasoning...\nAnswer: ", "\n"),
    ("The answer is ", "."),
    ("#### ", ""),
    ("", "\nAnswer: 135"),
    ("", "\n\\boxed{\\frac{14}{3}}"),
    ("", "\n<answer>\n" + ACTIONS[0] + "\n</answer>"),
    ("<answer>\n", "\n</answer>"),
    ("\\boxed{\\frac{", "}{3}}"),
    ("\\boxed{", "^{9^{9}}}"),
]
in_context = st.tuples(st.sampled_from(CONTEXTS), candidate).map(lambda t: t[0][0] + t[1] + t[0][1])

MB = 1 << 20
_noise = random.Random(0).randbytes(MB)
MEGABYTE = [
    "9" * MB,
    "{" * MB,
    "}" * MB,
    "\\boxed{" * (MB // 7),
    "(" * (MB // 2) + "1" + ")" * (MB // 2),
    "Answer: 1\n" * (MB // 10),
    "<answer>" * (MB // 8),
    "\n" * MB,
    " " * MB + "Answer: 135",
    _noise.decode("latin-1"),
    _noise.decode("utf-8", "surrogateescape"),
    "x" * MB + "\\boxed{\\frac{14}{3}}",
    (ACTIONS[0] + "\n") * (MB // len(ACTIONS[0])),
    "a" * MB + PAYLOADS[0],
    ("\\boxed{" + "9" * 1000 + "}") * (MB // 1008),
]
megabyte = st.one_of(
    st.sampled_from(MEGABYTE),
    st.tuples(st.sampled_from(MEGABYTE), candidate).map(lambda t: t[0] + t[1]),
    st.tuples(candidate, st.sampled_from(MEGABYTE)).map(lambda t: t[0] + t[1]),
)

COMPLETIONS = st.one_of(candidate, in_context, in_context, megabyte)

# ---------------------------------------------------------------------------------------- verifiers


@dataclass
class Verifier:
    tasks: list
    references: list
    bound: float
    in_process: bool
    calls: int = 0
    slowest: float = 0.0
    credited: int = 0
    seconds: float = 0.0


def variants(name: str, **options) -> list:
    """The task with its defaults, and with a 0.1 format reward under each template."""
    return [get_task(name, **options)] + [
        get_task(name, format_reward=0.1, template=t, **options)
        for t in ("think", "boxed", "plain")
    ]


REFERENCES = {
    "arithmetic": ARITHMETIC_REFS,
    "math": MATH_REFS,
    "gsm8k": GSM8K_REFS,
    "countdown": COUNTDOWN_REFS,
    "blocksworld": BLOCKS_REFS,
}
"""Hand-picked references; a task not listed here is checked around its held-out problems'."""
EXTRA_VARIANTS = {"blocksworld": [get_task("blocksworld", plan_shaping="ratio")]}


def verifier_of(name: str) -> Verifier:
    """A registered task's verifier under test: a task that takes verify_timeout runs its verifier
    in a child process (math-verify), bounded by that; any other runs in this process."""
    child = "verify_timeout" in inspect.signature(TASKS[name].__init__).parameters
    tasks = variants(name, **({"verify_timeout": MATH_TIMEOUT} if child else {}))
    references = REFERENCES.get(name) or [
        p.reference for level in tasks[0].levels for p in tasks[0].eval_problems(level, 2)
    ]
    bound = MATH_TIMEOUT + MATH_SLACK if child else IN_PROCESS_BOUND
    return Verifier(tasks + EXTRA_VARIANTS.get(name, []), references, bound, not child)


VERIFIERS = {name: verifier_of(name) for name in sorted(TASKS)}
"""Every task of the registry: a new task cannot escape this test."""


@contextmanager
def no_code_execution():
    """eval, exec, os.system and subprocess.Popen replaced by recorders that raise; yields the calls
    made."""
    calls: list[str] = []

    def forbidden(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"a verifier called {name}")

        return record

    saved = builtins.eval, builtins.exec, os.system, subprocess.Popen
    builtins.eval, builtins.exec = forbidden("eval"), forbidden("exec")
    os.system, subprocess.Popen = forbidden("os.system"), forbidden("subprocess.Popen")
    try:
        yield calls
    finally:
        builtins.eval, builtins.exec, os.system, subprocess.Popen = saved


def verify_once(name: str, completion: str, pick: int) -> None:
    verifier = VERIFIERS[name]
    task = verifier.tasks[pick % len(verifier.tasks)]
    reference = verifier.references[pick // len(verifier.tasks) % len(verifier.references)]
    # A verifier in this process is bounded in the work it does: its thread's CPU seconds, which
    # other processes on a busy machine do not inflate (wall time read 1.64 s for 0.2 s of work
    # under load). A child-process verifier is bounded by the wall time its parent waits.
    clock = time.thread_time if verifier.in_process else time.perf_counter
    start = clock()
    reward = task.verify(completion, reference)
    elapsed = clock() - start
    assert isinstance(reward, float) and 0.0 <= reward <= 1.0, f"{name} returned {reward!r}"
    assert elapsed <= verifier.bound, (
        f"{name} took {elapsed:.2f} s (bound {verifier.bound} s) on {completion[:200]!r}"
    )
    verifier.calls += 1
    verifier.slowest = max(verifier.slowest, elapsed)
    verifier.seconds += elapsed
    verifier.credited += reward > 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
@given(completion=COMPLETIONS, pick=st.integers(0, 1 << 16))
@example(completion="\\boxed{9^{9^{9^{9}}}}", pick=0)
@example(completion="\\boxed{" * 50_000, pick=0)
@example(completion="(" * 50_000 + "1" + ")" * 50_000, pick=0)
@example(completion="Answer: " + "9" * 5000, pick=0)
@example(completion="\\boxed{" + "9" * 400 + "}", pick=1)
@example(completion=MEGABYTE[0], pick=0)
@example(completion=b"\\boxed{\xff\xfe}".decode("utf-8", "surrogateescape"), pick=0)
@example(completion="<answer>" + PAYLOADS[0] + "</answer>", pick=0)
@example(completion="\\boxed{" + PAYLOADS[0] + "}", pick=0)
@example(completion="Answer: " + PAYLOADS[1], pick=0)
def check_every_verifier(completion: str, pick: int) -> None:
    with no_code_execution() as calls:
        for name in [name for name, v in VERIFIERS.items() if v.in_process]:
            verify_once(name, completion, pick)
    assert not calls, f"code execution attempted: {calls}"
    for name in [name for name, v in VERIFIERS.items() if not v.in_process]:
        verify_once(name, completion, pick)
    assert not os.path.exists(SENTINEL), f"a payload ran: {completion[:300]!r}"


@pytest.fixture(scope="module", autouse=True)
def remove_sentinel():
    yield
    if os.path.exists(SENTINEL):  # only after a failure
        os.remove(SENTINEL)


@pytest.fixture
def warm_math_verify():
    """A running math-verify child that has imported math-verify, started outside the timed
    calls."""
    assert get_task("math", verify_timeout=60.0).verify("\\boxed{1+1}", "2") == 1.0


@pytest.mark.slow
def test_adversarial_completions_are_safe_for_every_verifier(warm_math_verify):
    timeouts_before = MATH_VERIFY.timeouts
    started = time.perf_counter()
    check_every_verifier()
    summary = ", ".join(
        f"{name} {v.calls} calls ({v.seconds:.0f} s, slowest {v.slowest:.2f} s, "
        f"{v.credited} credited)"
        for name, v in VERIFIERS.items()
    )
    print(
        f"\n{summary}; math-verify timeouts {MATH_VERIFY.timeouts - timeouts_before}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    for name, verifier in VERIFIERS.items():
        assert verifier.calls >= EXAMPLES, f"{name} saw only {verifier.calls} completions"
    assert not os.path.exists(SENTINEL)


def test_math_verify_timeout_kills_the_child_and_the_next_call_works(warm_math_verify):
    task = get_task("math", verify_timeout=MATH_TIMEOUT)
    pid = MATH_VERIFY.process.pid
    timeouts = MATH_VERIFY.timeouts
    start = time.perf_counter()
    reward = task.verify(
        "\\boxed{9^{9^{9^{9}}}}", "9^{9^{9}}"
    )  # sympy tries to compute 9^387420489
    elapsed = time.perf_counter() - start
    assert reward == 0.0
    assert MATH_TIMEOUT <= elapsed <= MATH_TIMEOUT + MATH_SLACK
    assert MATH_VERIFY.timeouts == timeouts + 1
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert task.verify("\\boxed{2}", "2") == 1.0
    assert task.verify("\\boxed{3}", "2") == 0.0
    # math-verify itself answers again (a new child: its first call imports sympy, so a roomy bound
    # here)
    assert get_task("math", verify_timeout=60.0).verify("\\boxed{1+1}", "2") == 1.0
    assert MATH_VERIFY.process.pid != pid


def test_bounded_worker_bounds_a_call_and_restarts():
    worker = BoundedWorker(time.sleep, default="late")
    try:
        assert worker(0, timeout=60.0) is None  # started, answered
        pid = worker.process.pid
        start = time.perf_counter()
        assert worker(5, timeout=0.5) == "late"
        assert time.perf_counter() - start <= 0.5 + MATH_SLACK
        assert worker.timeouts == 1 and worker.process is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert worker(0, timeout=60.0) is None  # a fresh child
        assert worker.timeouts == 1
        assert (
            worker("not a number", timeout=60.0) == "late"
        )  # an exception in the child gives the default
        assert worker.process.poll() is None  # and leaves the child serving
    finally:
        worker.stop()
