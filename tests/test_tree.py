"""The reasoning tree and TreeRPO's step-level advantages, on small trees worked by hand."""

import pytest

from treerl.algo import treerpo_advantages
from treerl.rollout.tree import Node, ReasoningTree


def test_values_back_up_as_means_of_children():
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])
    assert tree.node((0,)).value == 0.5               # mean(1, 0)
    assert tree.node((1, 0)).value == 0.5             # mean(0, 1)
    assert tree.node((1,)).value == 0.75              # mean(0.5, 1)
    assert tree.root.value == 0.625                   # mean(0.5, 0.75): not the mean of the 5 leaves (0.6)
    assert tree.depth == 3
    assert [path for path, _ in tree.leaves()] == [(0, 0), (0, 1), (1, 0, 0), (1, 0, 1), (1, 1)]


def test_walk_visits_parents_before_children_in_order():
    tree = ReasoningTree.from_leaf_rewards([[1, 0], 1])
    assert [path for path, _ in tree.walk()] == [(), (0,), (0, 0), (0, 1), (1,)]


def test_bad_nesting_is_an_error():
    with pytest.raises(ValueError, match="at least one child"):
        ReasoningTree.from_leaf_rewards([[], 1])
    with pytest.raises(ValueError, match="root is a list"):
        ReasoningTree.from_leaf_rewards(1)


def test_bernoulli_advantages_by_hand():
    # root group: (0.5, 0.75), mu = 0.625, d = 0.625 * 0.375 = 0.234375
    # group under (0,): (1, 0), mu = 0.5, d = 0.25 -> +-2
    # group under (1,): (0.5, 1), mu = 0.75, d = 0.1875 -> -+4/3
    # group under (1, 0): (0, 1) -> -+2
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])
    adv = treerpo_advantages(tree)
    expected = {(0,): -0.125 / 0.234375, (1,): 0.125 / 0.234375, (0, 0): 2.0, (0, 1): -2.0,
                (1, 0): -4 / 3, (1, 1): 4 / 3, (1, 0, 0): -2.0, (1, 0, 1): 2.0}
    assert adv.keys() == expected.keys()
    for path, value in expected.items():
        assert adv[path] == pytest.approx(value, rel=1e-5), path


def test_std_and_no_normalisation():
    tree = ReasoningTree.from_leaf_rewards([1, 0, 0, 0])          # mu = 0.25, population std = sqrt(3)/4
    std = treerpo_advantages(tree, norm="std")
    assert std[(0,)] == pytest.approx(0.75 / (3 ** 0.5 / 4), rel=1e-5)
    assert std[(1,)] == pytest.approx(-0.25 / (3 ** 0.5 / 4), rel=1e-5)
    none = treerpo_advantages(tree, norm="none")
    assert none == {(0,): 0.75, (1,): -0.25, (2,): -0.25, (3,): -0.25}


def test_groups_whose_values_spread_less_than_tau_are_pruned():
    # root group (0.5, 0.53): spread 0.03 < 0.1 -> dropped; (1, 0) and (0.6, 0.46): spread 1 and 0.14 -> kept
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [0.6, 0.46]])
    assert set(treerpo_advantages(tree)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(treerpo_advantages(tree, prune_tau=0.2)) == {(0, 0), (0, 1)}
    assert set(treerpo_advantages(tree, prune_tau=0.0)) == {(0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)}
    all_equal = ReasoningTree.from_leaf_rewards([[1, 1], [0, 0]])
    assert set(treerpo_advantages(all_equal)) == {(0,), (1,)}  # only the root group differs


def test_unknown_norm_is_an_error():
    from treerl.errors import UserError

    with pytest.raises(UserError, match="unknown tree.norm 'zscore'"):
        treerpo_advantages(ReasoningTree.from_leaf_rewards([1, 0]), norm="zscore")


def test_prefix_and_text_ids_follow_the_path():
    root = Node(children=[Node(token_ids=[5, 6], children=[Node(token_ids=[7], reward=1.0), Node([8], reward=0.0)])])
    tree = ReasoningTree(root, prompt_ids=[1, 2])
    tree.backup()
    assert tree.prefix_ids((0,)) == [1, 2]
    assert tree.prefix_ids((0, 1)) == [1, 2, 5, 6]
    assert tree.text_ids((0, 1)) == [5, 6, 8]
    assert tree.root.value == 0.5
