"""Task suites: structure, reproducible initial states, held-out splits kept apart from training, earlier
versions that still rebuild bit for bit."""

from __future__ import annotations

import pytest
import torch

from reinforge.envs import make_env, registered_envs
from reinforge.envs.tabletop.catalog import CATEGORIES
from reinforge.envs.tabletop.tasks import (
    HELDOUT_SUITES,
    INIT_BANKS,
    LEGACY_SUITES,
    NUM_INIT_STATES,
    SUITE_NAMES,
    get_suite,
)

ALL_SUITES = SUITE_NAMES + LEGACY_SUITES
# Suite.fingerprint() per (suite, split). object_v1 and long_v1 carry the values "object" and "long" had before
# they were redefined: the earlier versions rebuild bit for bit. A changed entry means a changed suite: give
# the new definition a new name (keep the old one in LEGACY_SUITES) instead of editing the value here.
FINGERPRINTS = {
    ("spatial", "train"): "ffdee0217ee17ced", ("spatial", "heldout"): "5737ab34e65f163d",
    ("object", "train"): "90dbd3ce550d2aca", ("object", "heldout"): "c281510149a88269",
    ("goal", "train"): "24667fa420ca11fb", ("goal", "heldout"): "82436612f4ef5d4a",
    ("long", "train"): "49966ca5816a849f",
    ("object_v1", "train"): "c173c180e2d99747", ("object_v1", "heldout"): "6957fd5f6bd1c992",
    ("long_v1", "train"): "628fce2d8a455713",
}
# Suite.bank_fingerprint("val") per (suite, split): the validation bank, added after the two above (its states are
# drawn from its own name, so the eval and train banks, and FINGERPRINTS, did not change)
VAL_FINGERPRINTS = {
    ("spatial", "train"): "f3e592c1ed224086", ("spatial", "heldout"): "f2e783b8e92a0445",
    ("object", "train"): "0bfd6cc105f56946", ("object", "heldout"): "5c671b914219ef18",
    ("goal", "train"): "c204979c1442d97b", ("goal", "heldout"): "afe259f3ea83b555",
    ("long", "train"): "b549903eea5fe669",
    ("object_v1", "train"): "f5459c55832c0880", ("object_v1", "heldout"): "4faa13858d01c261",
    ("long_v1", "train"): "d326c680ab703604",
}


@pytest.mark.parametrize("name", ALL_SUITES)
def test_suite_shapes_and_instructions(name):
    s = get_suite(name)
    assert s.num_tasks == 10 and len(set(s.instructions)) == 10
    assert s.init_pos.shape[:3] == (len(INIT_BANKS), 10, NUM_INIT_STATES) and INIT_BANKS == ("eval", "train", "val")
    assert s.goal_mask.any(1).all()


@pytest.mark.parametrize("name", ALL_SUITES)
def test_initial_states_have_no_overlap_and_differ_per_bank(name):
    s = get_suite(name)
    half = torch.tensor([c.half for c in CATEGORIES])[s.category]  # (T, N, 2)
    on_table = (s.init_pos[..., 2] == 0) & s.active[None, :, None, :]  # (K, T, I, N)
    xy = s.init_pos[..., :2]
    d = (xy[..., :, None, :] - xy[..., None, :, :]).abs()  # (K, T, I, N, N, 2)
    reach = half[None, :, None, :, None, :] + half[None, :, None, None, :, :]
    overlap = (d < reach).all(-1) & on_table[..., :, None] & on_table[..., None, :]
    overlap &= ~torch.eye(s.num_objects, dtype=torch.bool)
    assert not overlap.any(), "resting objects must not interpenetrate at the start"
    # the banks are disjoint: no initial state of one bank equals one of another (same task)
    flat = s.init_pos.flatten(3)  # (K, T, I, N*3)
    for a in range(len(INIT_BANKS)):
        for b in range(a + 1, len(INIT_BANKS)):
            same = (flat[a][:, :, None] == flat[b][:, None, :]).all(-1)  # (T, I, I)
            assert not same.any(), (INIT_BANKS[a], INIT_BANKS[b])
    # rebuilding gives the same states (seeded, not random)
    get_suite.cache_clear()
    assert torch.equal(get_suite(name).init_pos, s.init_pos)


def test_heldout_splits_are_new():
    sp_tr, sp_ho = get_suite("spatial", "train"), get_suite("spatial", "heldout")
    assert sp_tr.instructions == sp_ho.instructions, "same instructions, unseen layouts"
    assert (sp_tr.init_pos[0] - sp_ho.init_pos[0]).abs().max() > 0.1
    ob_tr, ob_ho = get_suite("object", "train"), get_suite("object", "heldout")
    train_objs = {(c.item(), tuple(r.tolist())) for t in range(10)
                  for c, r, a in zip(ob_tr.category[t], ob_tr.rgb[t], ob_tr.active[t]) if a}
    targets = {(ob_ho.category[t, 0].item(), tuple(ob_ho.rgb[t, 0].tolist())) for t in range(10)}
    assert not (targets & train_objs), "held-out targets are unseen category/colour combinations"
    assert not set(get_suite("goal", "heldout").instructions) & set(get_suite("goal").instructions)
    assert set(HELDOUT_SUITES) == {"spatial", "object", "goal", "object_v1"}


def test_task_lookup_errors():
    s = get_suite("spatial")
    assert s.task_index("spatial_3") == 3
    with pytest.raises(ValueError, match="unknown task"):
        s.task_index("nope")
    with pytest.raises(ValueError, match="unknown split"):
        get_suite("spatial", "test")


def test_suite_definitions_are_pinned():
    """Seeded by names (zlib.crc32), never by process state: every build on every machine gives these tables."""
    get_suite.cache_clear()
    assert {key: get_suite(*key).fingerprint() for key in FINGERPRINTS} == FINGERPRINTS
    assert {key: get_suite(*key).bank_fingerprint("val") for key in VAL_FINGERPRINTS} == VAL_FINGERPRINTS
    assert set(FINGERPRINTS) == {(n, "train") for n in ALL_SUITES} | {(n, "heldout") for n in HELDOUT_SUITES}
    assert set(VAL_FINGERPRINTS) == set(FINGERPRINTS)


def test_versioned_suites_run_by_name_and_all_means_the_current_ones():
    assert registered_envs()["tabletop"] == SUITE_NAMES  # `--suite all`
    env = make_env("tabletop", suite="object_v1", num_envs=2, split="heldout", render=False)
    assert env.spec.suite == "object_v1" and env.spec.splits == ("train", "heldout")
    assert make_env("tabletop", suite="long_v1", num_envs=1, render=False).spec.max_episode_steps == 320
    with pytest.raises(ValueError, match="no held-out split"):
        get_suite("long_v1", "heldout")
    with pytest.raises(ValueError, match=r"earlier versions: \['object_v1', 'long_v1'\]"):
        get_suite("object_v2")


def test_object_scenes_are_templates_with_the_target_in_varying_slots():
    """LIBERO-Object: every initial state of a task is its template plus jitter; the target's slot varies."""
    for split in ("train", "heldout"):
        s = get_suite("object", split)
        xy = s.init_pos[..., :2]  # (K, T, I, N, 2)
        spread = (xy - xy[:, :, :1]).abs().amax(dim=(0, 2, 3, 4))  # (T,) vs the first state of the eval bank
        assert (spread <= 2 * max(t.jitter for t in s.tasks) + 1e-6).all(), spread
        target_slots = {s.tasks[t].layout["target"] for t in range(s.num_tasks)}
        assert len(target_slots) >= 5, target_slots
    v1 = get_suite("object_v1").init_pos[..., :2]
    assert (v1 - v1[:, :, :1]).abs().amax() > 0.2, "object_v1 keeps its random layouts"


def test_long_tasks_have_two_subgoals_in_small_scenes():
    for name in ("long", "long_v1"):
        s = get_suite(name)
        assert s.goal_mask.sum(1).tolist() == [2] * s.num_tasks
    assert get_suite("long").active.sum(1).max() <= 5 < get_suite("long_v1").active.sum(1).min()
