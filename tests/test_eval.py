from math import comb

import pytest

from treerl.eval import k_values, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (5, 0, 5, 0.0),
    (5, 5, 1, 1.0),
    (5, 5, 5, 1.0),
    (4, 1, 1, 0.25),                              # 1 - C(3,1)/C(4,1) = 1 - 3/4
    (4, 1, 2, 0.5),                               # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 3, 5, 1 - 21 / 252),                     # 1 - C(7,5)/C(10,5)
    (10, 8, 3, 1.0),                              # fewer than k wrong samples: always a hit
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_pass_at_k_matches_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_success_rate():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_k_larger_than_n_raises():
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


@pytest.mark.parametrize("samples, expected", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]),
                                               (9, [1, 2, 4, 8, 9])])
def test_k_values(samples, expected):
    assert k_values(samples) == expected
