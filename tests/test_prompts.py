"""Prompt templates: rendering with and without a chat template, and what counts as well-formed."""

import pytest

from treerl.tasks import get_task
from treerl.tasks.prompts import TEMPLATES, render_prompt

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
