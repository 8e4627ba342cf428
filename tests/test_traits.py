"""Tests of adamx/traits.py: what transformations declare, and how combinators
derive it from their parts."""

import jax.numpy as jnp
import optax
import pytest

import adamx
from adamx.traits import Stage, Traits, chained, replace_at, state_at


def names(tx):
    return [(s.name, s.path) for s in adamx.traits_of(tx).stages]


def test_a_transformation_is_optaxs_pair_with_its_traits_beside_it():
    tx = adamx.adam(1e-3)
    # Two fields, as Optax's: Optax's chain unpacks them with zip(*transforms).
    init, update = tx
    assert (init, update) == (tx.init, tx.update)
    assert len(tx) == 2 and tx._fields == ("init", "update")
    mixed = optax.chain(tx, optax.scale(1.0))
    params = {"w": jnp.ones(3)}
    mixed.update(params, mixed.init(params), params)
    # Rebuilt by _replace, a transformation declares nothing: the traits were
    # the old functions'.
    assert adamx.traits_of(tx._replace(update=update)) == Traits()


def test_foreign_transformations_declare_nothing():
    assert adamx.traits_of(optax.adam(1e-3)) == Traits()
    assert adamx.traits_of(object()) == Traits()


def test_a_chain_lists_its_parts_stages_under_their_indices():
    tx = adamx.chain(
        adamx.scale_by_adam(),
        adamx.add_decayed_weights(0.1),
        adamx.scale_by_learning_rate(1e-3),
    )
    assert names(tx) == [
        ("scale_by_adam", (0,)),
        ("add_decayed_weights", (1,)),
        ("scale_by_learning_rate", (2,)),
    ]
    # adamw is that chain: the same stages, in the same places.
    assert names(adamx.adamw(1e-3, weight_decay=0.1)) == names(tx)
    assert adamx.traits_of(tx).elementwise is True


def test_nested_and_named_chains_give_each_stage_its_path():
    inner = adamx.chain(adamx.scale_by_adam(), adamx.add_decayed_weights(0.1))
    nested = adamx.chain(inner, adamx.scale_by_learning_rate(1e-3))
    assert names(nested) == [
        ("scale_by_adam", (0, 0)),
        ("add_decayed_weights", (0, 1)),
        ("scale_by_learning_rate", (1,)),
    ]
    named = adamx.named_chain(("adam", adamx.adam(1e-3)), ("id", adamx.identity()))
    assert names(named) == [
        ("scale_by_adam", ("adam", 0)),
        ("scale_by_learning_rate", ("adam", 1)),
    ]
    # Each path leads to that stage's state.
    params = {"w": jnp.ones(3)}
    for tx in (nested, named):
        state = tx.init(params)
        for stage in adamx.traits_of(tx).stages:
            part = state_at(state, stage.path)
            if stage.name == "scale_by_adam":
                assert isinstance(part, adamx.ScaleByAdamState)


def test_an_opaque_or_per_leaf_part_decides_for_the_chain():
    opaque = adamx.chain(adamx.adam(1e-3), optax.scale(1.0))
    assert adamx.traits_of(opaque).stages is None
    assert adamx.traits_of(opaque).elementwise is None
    per_leaf = adamx.chain(adamx.adam(1e-3), adamx.scale_by_trust_ratio())
    assert adamx.traits_of(per_leaf).elementwise is False
    masked = adamx.adamw(1e-3, mask={"w": True})
    assert adamx.traits_of(masked).stages is None
    assert adamx.traits_of(masked).elementwise is False


def test_wrappers_keep_the_element_wise_trait_and_hide_the_stages():
    for wrap in (
        lambda tx: adamx.apply_if_finite(tx, 3),
        lambda tx: adamx.MultiSteps(tx, 2).gradient_transformation(),
        adamx.monitor,
    ):
        assert adamx.traits_of(wrap(adamx.adam(1e-3))).elementwise is True
        assert adamx.traits_of(wrap(adamx.adam(1e-3))).stages is None
        assert adamx.traits_of(wrap(adamx.lamb(1e-3))).elementwise is False
    injected = adamx.inject_hyperparams(adamx.adam)(1e-3)
    assert adamx.traits_of(injected) == Traits(elementwise=True)


def test_the_skeletons_stage_holds_its_arguments_and_storage():
    (adam,) = adamx.traits_of(adamx.scale_by_adam(0.8, state_bits=8)).stages
    assert adam.args["b1"] == 0.8 and adam.args["nesterov"] is False
    assert adam.args["storage"].bits == 8


def test_chained_is_per_leaf_if_any_part_is_and_unknown_if_any_is_unknown():
    yes, no, unknown = Traits(True, ()), Traits(False, ()), Traits()
    assert chained([(0, yes), (1, yes)]).elementwise is True
    assert chained([(0, yes), (1, no), (2, unknown)]).elementwise is False
    assert chained([(0, yes), (1, unknown)]).elementwise is None
    assert chained([]) == Traits(True, ())
    stage = Stage("s", {})
    assert chained([("a", Traits(True, (stage,)))]).stages == (
        stage._replace(path=("a",)),
    )


def test_state_at_and_replace_at_walk_tuples_namedtuples_and_dicts():
    state = (adamx.EmptyState(), {"a": adamx.ScaleByScheduleState(count=1)})
    assert state_at(state, (1, "a", 0)) == 1
    new = replace_at(state, (1, "a"), adamx.ScaleByScheduleState(count=2))
    assert new[1]["a"].count == 2 and state[1]["a"].count == 1
    assert type(new[1]["a"]) is adamx.ScaleByScheduleState
    assert replace_at(state, (), 5) == 5
    with pytest.raises((KeyError, IndexError)):
        state_at(state, (5,))


def test_a_rebuilt_transformation_still_has_traits_to_read():
    rebuilt = adamx.adam(1e-3)._replace(update=lambda u, s, p=None: (u, s))
    assert rebuilt.traits == Traits()
