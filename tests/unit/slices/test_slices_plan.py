"""Desired pool + stored slices -> writes: generation and resourceSliceCount discipline."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from dra_driver.slices.plan import (
    Plan,
    copy_taint_times,
    fingerprint,
    normalize_spec,
    plan_pool,
    slice_index,
)

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
_ids = itertools.count(1)


def dev(name: str, memory: str = "80Gi", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "attributes": {"type": {"string": "gpu"}, "index": {"int": 0}},
        "capacity": {"memory": {"value": memory}},
        **extra,
    }


def fragments(*groups: list[str]) -> list[dict[str, Any]]:
    return [{"devices": [dev(n) for n in g]} for g in groups]


def store(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server keeps for a created object: a name, uid, revision, stamps."""
    out = copy.deepcopy(obj)
    n = next(_ids)
    meta = out["metadata"]
    meta["name"] = meta.pop("generateName", "") + f"x{n:04d}"
    meta["uid"] = f"uid-{n}"
    meta["resourceVersion"] = str(100 + n)
    meta["managedFields"] = [{"manager": "python"}]
    for d in out["spec"].get("devices") or ():
        for t in d.get("taints", ()):
            t.setdefault("timeAdded", "2026-05-01T10:00:00Z")
    return out


def publish(frags: list[dict[str, Any]], actual: list[dict[str, Any]] | None = None) -> Plan:
    return plan_pool(frags, actual or [], driver=DRIVER, node_name=NODE, node_uid="node-uid")


def apply(plan: Plan, actual: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored state after a plan's writes succeeded."""
    gone = {d["metadata"]["uid"] for d in plan.deletes}
    by_uid = {u.current["metadata"]["uid"]: u.body for u in plan.updates}
    out = [
        copy.deepcopy(by_uid.get(o["metadata"]["uid"], o))
        for o in actual
        if o["metadata"]["uid"] not in gone
    ]
    return out + [store(c) for c in plan.creates]


def test_first_publication_creates_every_slice_at_generation_one() -> None:
    plan = publish(fragments(["gpu-0"], ["gpu-1"]))
    assert (plan.generation, len(plan.creates), plan.deletes, plan.updates) == (1, 2, [], [])
    first = plan.creates[0]
    assert first["metadata"]["generateName"] == "00000-gpu.nvidia.com-node-a-"
    assert first["metadata"]["ownerReferences"][0]["uid"] == "node-uid"
    assert first["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 2}
    assert plan.creates[1]["metadata"]["generateName"].startswith("00001-")


def test_restart_with_the_same_desired_state_writes_nothing() -> None:
    frags = fragments(["gpu-0", "gpu-1"], ["gpu-2"])
    stored = apply(publish(frags), [])
    plan = publish(frags, stored)
    assert plan.writes == 0
    assert sorted(plan.unchanged) == sorted(o["metadata"]["name"] for o in stored)


def test_comparison_is_semantic() -> None:
    frags = [{"devices": [dev("gpu-0", memory="1k")]}]
    stored = apply(publish(frags), [])
    # The server re-encodes quantities and omits empty and false fields.
    stored[0]["spec"]["devices"][0]["capacity"]["memory"]["value"] = "1000"
    stored[0]["spec"]["devices"][0]["taints"] = []
    stored[0]["spec"]["devices"][0]["allowMultipleAllocations"] = False
    stored[0]["spec"]["devices"][0]["attributes"]["type"]["int"] = None
    assert publish(frags, stored).writes == 0
    stored[0]["spec"]["devices"][0]["capacity"]["memory"]["value"] = "1001"
    assert publish(frags, stored).writes == 1


def test_one_changed_slice_is_one_update_at_the_same_generation() -> None:
    frags = fragments(["gpu-0"], ["gpu-1"])
    stored = apply(publish(frags), [])
    frags[1]["devices"][0]["taints"] = [{"key": "gpu.nvidia.com/unhealthy", "effect": "NoSchedule"}]
    plan = publish(frags, stored)
    assert (len(plan.updates), plan.creates, plan.deletes, plan.generation) == (1, [], [], 1)
    body = plan.updates[0].body
    assert body["metadata"]["name"] == stored[1]["metadata"]["name"]
    assert body["metadata"]["resourceVersion"] == stored[1]["metadata"]["resourceVersion"]
    assert "managedFields" not in body["metadata"]
    assert body["metadata"]["ownerReferences"] == stored[1]["metadata"]["ownerReferences"]


def test_two_changed_slices_bump_the_generation_and_rewrite_all() -> None:
    frags = fragments(["gpu-0"], ["gpu-1"], ["gpu-2"])
    stored = apply(publish(frags), [])
    frags[0]["devices"].append(dev("gpu-9"))
    frags[1]["devices"] = []
    plan = publish(frags, stored)
    assert plan.generation == 2
    assert len(plan.updates) == 3
    assert {u.body["spec"]["pool"]["generation"] for u in plan.updates} == {2}
    assert publish(frags, apply(plan, stored)).writes == 0


def test_a_slice_deleted_behind_our_back_is_recreated_alone() -> None:
    frags = fragments(["gpu-0"], ["gpu-1"], ["gpu-2"])
    stored = apply(publish(frags), [])
    plan = publish(frags, [stored[0], stored[2]])
    assert (plan.updates, plan.deletes, len(plan.creates), plan.generation) == ([], [], 1, 1)
    assert plan.creates[0]["metadata"]["generateName"].startswith("00001-")


def test_a_wiped_pool_comes_back_with_a_higher_generation() -> None:
    frags = fragments(["gpu-0"])
    plan = plan_pool(frags, [], driver=DRIVER, node_name=NODE, min_generation=7)
    assert plan.generation == 8


def test_fewer_slices_delete_the_tail_first() -> None:
    stored = apply(publish(fragments(["gpu-0"], ["gpu-1"])), [])
    plan = publish(fragments(["gpu-0", "gpu-1"]), stored)
    assert [d["metadata"]["name"] for d in plan.deletes] == [stored[1]["metadata"]["name"]]
    assert len(plan.updates) == 1 and plan.generation == 1
    assert plan.updates[0].body["spec"]["pool"]["resourceSliceCount"] == 1


def test_more_slices_update_the_pool_size_everywhere() -> None:
    stored = apply(publish(fragments(["gpu-0"], ["gpu-1"])), [])
    plan = publish(fragments(["gpu-0"], ["gpu-1"], ["gpu-2"]), stored)
    assert plan.generation == 2
    assert (len(plan.updates), len(plan.creates)) == (2, 1)
    assert plan.creates[0]["spec"]["pool"] == {
        "name": NODE,
        "generation": 2,
        "resourceSliceCount": 3,
    }


def test_obsolete_slices_are_deleted() -> None:
    frags = fragments(["gpu-0"], ["gpu-1"])
    stored = apply(publish(frags), [])
    old = copy.deepcopy(stored[0])
    old["metadata"].update(name="00000-old", uid="uid-old")
    old["spec"]["pool"]["generation"] = 0
    dup = copy.deepcopy(stored[1])
    dup["metadata"].update(name="00001-zzz", uid="uid-dup")
    out_of_range = copy.deepcopy(stored[1])
    out_of_range["metadata"].update(name="00002-gpu.nvidia.com-node-a-abc", uid="uid-oor")
    unparsable = copy.deepcopy(stored[1])
    unparsable["metadata"].update(name="node-a-gpu.nvidia.com", uid="uid-np")
    foreign = copy.deepcopy(stored[1])
    foreign["metadata"].update(name="00001-foreign", uid="uid-f")
    foreign["spec"]["pool"]["name"] = "other-pool"
    plan = publish(frags, [*stored, old, dup, out_of_range, unparsable, foreign])
    assert {d["metadata"]["uid"] for d in plan.deletes} == {
        "uid-old",
        "uid-dup",
        "uid-oor",
        "uid-np",
        "uid-f",
    }
    assert plan.updates == [] and plan.creates == []


def test_duplicates_keep_the_one_already_right() -> None:
    frags = fragments(["gpu-0"])
    stored = apply(publish(frags), [])
    stale = copy.deepcopy(stored[0])
    stale["metadata"].update(name="00000-aaa", uid="uid-stale")
    stale["spec"]["devices"] = []
    plan = publish(frags, [stale, stored[0]])
    assert [d["metadata"]["uid"] for d in plan.deletes] == ["uid-stale"]
    assert plan.updates == []


def test_unchanged_taints_keep_their_stored_time() -> None:
    taint = {"key": "gpu.nvidia.com/unhealthy", "value": "xid-79", "effect": "NoSchedule"}
    frags = [{"devices": [dev("gpu-0", taints=[dict(taint)]), dev("gpu-1")]}]
    stored = apply(publish(frags), [])
    frags[0]["devices"][1]["taints"] = [dict(taint, value="gpu-lost")]
    plan = publish(frags, stored)
    assert len(plan.updates) == 1
    devices = plan.updates[0].body["spec"]["devices"]
    assert devices[0]["taints"][0]["timeAdded"] == "2026-05-01T10:00:00Z"
    assert "timeAdded" not in devices[1]["taints"][0]
    assert "timeAdded" not in frags[0]["devices"][0]["taints"][0]  # the input is not mutated


def test_server_dropped_fields_count_as_converged_when_remembered() -> None:
    taint = {"key": "gpu.nvidia.com/unhealthy", "effect": "NoSchedule"}
    frags = [{"devices": [dev("gpu-0", taints=[taint])]}]
    created = publish(frags).creates[0]
    stored = store(created)
    del stored["spec"]["devices"][0]["taints"]  # a 1.34 server with DRADeviceTaints off
    assert publish(frags, [stored]).writes == 1
    name = stored["metadata"]["name"]
    sent = dict(created["spec"])
    memory = {name: (fingerprint(sent), fingerprint(stored["spec"]))}
    plan = plan_pool(frags, [stored], driver=DRIVER, node_name=NODE, converged=memory)
    assert plan.writes == 0
    # A real change is still written.
    frags[0]["devices"][0]["capacity"]["memory"]["value"] = "40Gi"
    assert plan_pool(frags, [stored], driver=DRIVER, node_name=NODE, converged=memory).writes == 1


def test_counter_slices_are_compared_by_value() -> None:
    frags = [
        {
            "sharedCounters": [
                {"name": "gpu-0-counter-set", "counters": {"memory": {"value": "80Gi"}}}
            ]
        }
    ]
    stored = apply(publish(frags), [])
    stored[0]["spec"]["sharedCounters"][0]["counters"]["memory"]["value"] = "85899345920"
    assert publish(frags, stored).writes == 0


def test_helpers() -> None:
    assert slice_index("00000-gpu.nvidia.com-node-a-x1z") == 0
    assert slice_index("0001a-gpu") == 26
    assert slice_index("0000-gpu") is None
    assert slice_index("zzzzz-gpu") is None
    assert slice_index("nodash") is None
    spec = {"devices": [{"name": "a", "taints": [{"key": "k", "effect": "None"}]}]}
    stored = {
        "devices": [{"name": "a", "taints": [{"key": "k", "effect": "None", "timeAdded": "t"}]}]
    }
    assert (
        copy_taint_times(copy.deepcopy(spec), stored)["devices"][0]["taints"][0]["timeAdded"] == "t"
    )
    assert normalize_spec({"devices": []}) == {}
    assert normalize_spec(spec) != normalize_spec({"devices": [{"name": "a"}]})
