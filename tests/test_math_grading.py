"""Math answers: extraction order, normalisation, numeric and symbolic equivalence, the public scoring API."""

import pytest

from treerl.errors import UserError
from treerl.tasks import get_task, score
from treerl.tasks.extract import final_answer, last_boxed
from treerl.tasks.math_grader import answers_match, normalize


@pytest.mark.parametrize("text, answer", [
    (r"so \boxed{\frac{1}{2}} and finally \boxed{x^{2}}.", "x^{2}"),      # the last box
    (r"\boxed{\frac{a}{\sqrt{b}}}", r"\frac{a}{\sqrt{b}}"),                 # nested braces
    (r"\boxed{7} then an unclosed \boxed{8", "7"),                           # the last complete box
    (r"\fbox{12}", "12"),
    (r"\boxed 5$ done", "5"),
    ("<answer>1</answer> <answer>2</answer>", "2"),                          # the last answer tag
    ("<answer> 42 </answer> and <answer>unclosed", "42"),
    (r"<answer>3</answer> but \boxed{4}", "4"),                              # a box beats an answer tag
    ("work\nThe answer is 18.", "18"),
    ("work\nThe final answer is: $7$", "$7$"),
    ("Answer: 11\nmore text", "11"),
    ("Q: what?\nA: 9", "9"),
    ("blah\n#### 1,234", "1,234"),
])
def test_extraction_order(text, answer):
    assert final_answer(text) == answer


def test_numeric_tasks_fall_back_to_the_last_number():
    text = "she has 3 apples and buys 4.5 more"
    assert final_answer(text) is None
    assert final_answer(text, numeric=True) == "4.5"


def test_unbalanced_braces_find_an_earlier_complete_box_in_linear_time():
    assert last_boxed(r"\boxed{1}" + r"\boxed{" * 20_000) == "1"


@pytest.mark.parametrize("raw, canonical", [
    (r"\dfrac{14}{3}", r"\frac{14}{3}"),
    (r"\$18.00", "18.00"),
    (r"10\%", "10"),
    (r"30^\circ", "30"),
    (r"30^{\circ}", "30"),
    ("1,234,567", "1234567"),
    (r"5\text{ cm}", "5"),
    ("12 meters.", "12"),
    ("x = 3", "3"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"( 3, \frac{\pi}{2} )"),
    ("$x^2$", "x^2"),
])
def test_normalize(raw, canonical):
    assert normalize(raw) == canonical


@pytest.mark.parametrize("prediction, reference", [
    ("18", "18"), ("18.0", "18"), (r"\$18", "18"), ("18.00", "18"), ("18 dollars", "18"), ("1,800", "1800"),
    (r"\dfrac{14}{3}", r"\frac{14}{3}"), ("14/3", r"\frac{14}{3}"), ("0.5", r"\frac{1}{2}"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}"), ("1+x^2", "x^2+1"),
    (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"50\%", "50"), (r"90^\circ", "90"), (r"\text{(C)}", "C"), ("[1,2)", "[1,2)"), ("3.89e-10", "3.89e-10"),
])
def test_equivalent_answers_match(prediction, reference):
    assert answers_match(prediction, reference, timeout=10)


@pytest.mark.parametrize("prediction, reference", [
    ("19", "18"), ("18.01", "18"), (r"\frac{14}{5}", r"\frac{14}{3}"), ("x^2-1", "x^2+1"), ("(3, \\pi)", "(3, \\pi/2)"),
    ("52_9", "52_8"), ("3.89e-11", "3.89e-10"), ("", "18"), ("[1,2]", "[1,2)"),
])
def test_different_answers_do_not_match(prediction, reference):
    assert not answers_match(prediction, reference, timeout=10)


def test_score_is_one_for_correct_and_zero_otherwise():
    assert score("math", r"We find $x = \boxed{\dfrac{14}{3}}$.", r"\frac{14}{3}") == 1.0
    assert score("math", r"We find $x = \boxed{\dfrac{14}{5}}$.", r"\frac{14}{3}") == 0.0
    assert score("gsm8k", "She pays 9 * 2 = 18 dollars.\n#### 18", "18") == 1.0
    assert score("gsm8k", "She pays 9 * 2 = 18 dollars in total", "18") == 1.0   # the last number
    assert score("math", "She pays 9 * 2 = 18 dollars in total", "18") == 0.0    # math needs a marked answer
    assert score("gsm8k", "#### 18", 18) == 1.0                                   # a number as the reference


def test_format_reward_follows_the_template():
    boxed = get_task("math", format_reward=0.1)
    assert boxed.verify(r"so \boxed{18}", "18") == pytest.approx(1.0)
    assert boxed.verify("The answer is 18", "18") == pytest.approx(0.9)
    assert boxed.verify(r"so \boxed{17}", "18") == pytest.approx(0.1)
    think = get_task("math", format_reward=0.1, template="think")
    assert think.verify("<think>9*2</think>\n<answer>18</answer>", "18") == pytest.approx(1.0)
    assert think.verify("<answer>18</answer>", "18") == pytest.approx(0.9)


def test_bad_options_and_references_are_user_errors():
    with pytest.raises(UserError, match="task.plan_shaping does not apply to task 'math'"):
        get_task("math", plan_shaping=True)
    with pytest.raises(UserError, match="unknown task.template 'fancy'"):
        get_task("math", template="fancy")
    with pytest.raises(UserError, match="reference is the answer as a string"):
        score("math", r"\boxed{1}", ["1"])


@pytest.mark.parametrize("prediction", [
    "9^{9^{9^{9}}}", "10^{10^{10}}", "9**9**9", "2^{1234567}", "99999999!",   # sympy would compute these
    "(" * 300 + "1" + ")" * 300, "x" * 900,                                   # ANTLR would take seconds
])
def test_answers_far_bigger_than_the_reference_are_wrong_without_math_verify(prediction, monkeypatch):
    import treerl.tasks.math_grader as grader

    monkeypatch.setattr(grader, "MATH_VERIFY", lambda *args, **kwargs: pytest.fail("math-verify was called"))
    assert not answers_match(prediction, r"\sqrt{2}", timeout=10)


def test_a_reference_with_a_power_tower_still_reaches_math_verify():
    assert answers_match("2^{2^{3}}", "2^{2^3}", timeout=10)
    assert answers_match("256", "2^{2^{3}}", timeout=10)


def test_gsm8k_compares_numbers_only():
    assert score("gsm8k", r"\boxed{\frac{36}{2}}", "18") == 1.0
    assert score("gsm8k", r"\boxed{2 \times 9}", "18") == 0.0
    assert score("math", r"\boxed{2 \times 9}", "18") == 1.0
