"""Prompt templates: rendering with and without a chat template, and what counts as well-formed."""

import pytest

from treerl.config import load_config
from treerl.errors import UserError
from treerl.tasks import Problem, get_task
from treerl.tasks.prompts import PREVIEW_CHARS, TEMPLATES, preview, render_prompt

CHAT = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def chat_tokenizer(policy):
    tokenizer = policy[1]
    original = tokenizer.chat_template
    tokenizer.chat_template = CHAT
    yield tokenizer
    tokenizer.chat_template = original


def test_plain_is_the_question_itself(policy):
    assert render_prompt(TEMPLATES["plain"], "3+4\n", policy[1]) == "3+4\n"


def test_boxed_goes_through_the_chat_template_with_the_treerpo_system_prompt(chat_tokenizer):
    prompt = render_prompt(TEMPLATES["boxed"], "What is 1+1?", chat_tokenizer)
    assert prompt == (
        "<|system|>Please reason step by step, and put your final answer within \\boxed{}.\n"
        "<|user|>What is 1+1?\n<|assistant|>"
    )


def test_think_adds_the_e2h_instruction(chat_tokenizer):
    prompt = render_prompt(TEMPLATES["think"], "Q", chat_tokenizer)
    assert prompt.startswith("<|system|>You are a helpful assistant.")
    assert (
        "<|user|>Q\nShow your work in <think> </think> tags, "
        "and return the final answer in <answer> </answer> tags."
    ) in prompt


def test_without_a_chat_template_the_system_prompt_leads_as_text(policy):
    assert policy[1].chat_template is None
    prompt = render_prompt(TEMPLATES["boxed"], "What is 1+1?", policy[1])
    assert prompt == (
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nWhat is 1+1?\n"
    )


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>a</think><answer>1</answer>", True),
        ("  <think>a\nb</think>\n\n<answer> 1 </answer>\n", True),
        ("<think>a</think>x<answer>1</answer>", False),  # text between the blocks
        ("<answer>1</answer><think>a</think>", False),  # wrong order
        ("<think>a</think><answer>1</answer> more", False),  # text after
        ("<think><think>a</think><answer>1</answer>", False),  # a tag twice
        ("<think>a</think>", False),
    ],
)
def test_think_format(text, ok):
    assert TEMPLATES["think"].well_formed(text) is ok


@pytest.mark.parametrize(
    "text, ok",
    [
        ("x\nAnswer: 5", True),
        ("Answer: 5\n", True),
        ("Answer:  ", False),
        ("Answer: 5\nmore", False),
    ],
)
def test_plain_format(text, ok):
    assert TEMPLATES["plain"].well_formed(text) is ok


def test_each_task_has_its_default_template():
    assert {
        name: get_task(name).template.name
        for name in ["arithmetic", "math", "gsm8k", "countdown", "blocksworld"]
    } == {
        "arithmetic": "plain",
        "math": "boxed",
        "gsm8k": "boxed",
        "countdown": "think",
        "blocksworld": "think",
    }
    assert get_task("countdown", template="boxed").template.name == "boxed"


def chat_problem(*turns):
    """A dataset row's problem in the conversational format: its last turn is the question."""
    return Problem("Q", "4", "all", context=tuple(turns))


def test_messages_rows_render_with_the_system_prompt(chat_tokenizer):
    """task.system_prompt is the system turn of every prompt: a messages row's own is replaced,
    its other turns stay, and the chat template is applied as TRL applies it (generation prompt
    added, not tokenized)."""
    task = get_task("math", system_prompt="Be brief.")
    row = chat_problem(("system", "Row's own."), ("user", "1+1?"), ("assistant", "2"))
    assert task.prompt(row, chat_tokenizer) == (
        "<|system|>Be brief.\n<|user|>1+1?\n<|assistant|>2\n<|user|>Q\n<|assistant|>"
    )
    assert get_task("math", system_prompt="").prompt(row, chat_tokenizer) == (
        "<|user|>1+1?\n<|assistant|>2\n<|user|>Q\n<|assistant|>"
    )


def test_a_rows_own_system_turn_comes_before_the_templates(chat_tokenizer):
    task = get_task("math")
    assert task.prompt(chat_problem(("system", "Row's own.")), chat_tokenizer) == (
        "<|system|>Row's own.\n<|user|>Q\n<|assistant|>"
    )
    assert task.prompt(chat_problem(), chat_tokenizer).startswith(
        "<|system|>Please reason step by step"
    )


def test_a_format_string_template_is_the_user_message(chat_tokenizer):
    """`{problem}` is replaced, other braces stay; no system turn unless task.system_prompt; the
    answer format is the task's default template's (math: boxed)."""
    task = get_task("math", template="Solve: {problem}\nPut it in \\boxed{}.")
    problem = Problem("What is 1+1?", "2", "all")
    assert task.prompt(problem, chat_tokenizer) == (
        "<|user|>Solve: What is 1+1?\nPut it in \\boxed{}.\n<|assistant|>"
    )
    assert task.template.well_formed("\\boxed{2}") and not task.template.well_formed("2")
    with pytest.raises(UserError, match=r"available: boxed, plain, think, or a format string"):
        get_task("math", template="{question}")


def test_a_format_string_template_passes_the_configs_check():
    """On the command line YAML reads `Q: {problem}` as a mapping unless it is quoted."""
    assert load_config(None, ['task.template="Q: {problem}"']).task.template == "Q: {problem}"
    with pytest.raises(UserError, match="YAML read the text as a mapping .* quote it"):
        load_config(None, ["task.template=Q: {problem}"])
    with pytest.raises(UserError, match="unknown task.template 'boxd'"):
        load_config(None, ["task.template=boxd"])


def test_without_a_chat_template_the_turns_are_text(policy):
    task = get_task("math", system_prompt="S")
    assert task.prompt(chat_problem(("user", "U"), ("assistant", "A")), policy[1]) == (
        "S\n\nU\n\nA\n\nQ\n"
    )
    assert get_task("arithmetic", system_prompt="S").prompt(chat_problem(), policy[1]) == "S\n\nQ"
    task = get_task("math", template="Solve: {problem}")
    assert task.prompt(Problem("1+1?", "2", "all"), policy[1]) == "Solve: 1+1?\n"


def test_a_chat_template_that_refuses_the_prompt_is_one_line(chat_tokenizer):
    chat_tokenizer.chat_template = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + CHAT
    )
    with pytest.raises(UserError, match=r"refuses the prompt \(System role not supported\)"):
        get_task("math").prompt(chat_problem(), chat_tokenizer)
    assert get_task("math", system_prompt="").prompt(chat_problem(), chat_tokenizer) == (
        "<|user|>Q\n<|assistant|>"
    )


def test_the_preview_says_it_went_through_the_chat_template(chat_tokenizer):
    text = "<|system|>S\n<|user|>Q\n<|assistant|>"
    assert preview(TEMPLATES["boxed"], text, chat_tokenizer) == (
        "the first prompt, as the model reads it (task.template=boxed; through the model's chat "
        "template):\n  | <|system|>S\n  | <|user|>Q\n  | <|assistant|>"
    )


def test_the_preview_shows_every_line_and_cuts_a_long_prompt(policy):
    assert preview(TEMPLATES["boxed"], "S\n\nQ\n", policy[1]).endswith(
        "(task.template=boxed; plain text: the tokenizer has no chat template):\n"
        "  | S\n  | \n  | Q\n  | "
    )
    long = preview(TEMPLATES["plain"], "x" * (PREVIEW_CHARS + 5), policy[1])
    assert long.endswith("x... (5 more characters)")
