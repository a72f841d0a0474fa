"""The API server double through the unmodified official client: verbs, watch, selectors."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from apiserver_fixtures import (
    DRIVER,
    NODE,
    allocation,
    as_any,
    claim_body,
    core_v1,
    custom_objects,
    device,
    expect_error,
    resource_v1,
    slice_body,
)
from kubernetes import client, watch

from dra_driver.testing import ApiServerDouble

GROUP, VERSION = "resource.k8s.io", "v1"


def test_discovery_and_version(kube: client.ApiClient) -> None:
    info = as_any(client.VersionApi(kube)).get_code()
    assert (info.major, info.minor) == ("1", "36")
    groups = as_any(client.ApisApi(kube)).get_api_versions()
    assert [g.name for g in groups.groups] == ["resource.k8s.io"]
    resources = resource_v1(kube).get_api_resources()
    names = {r.name: r for r in resources.resources}
    assert not names["resourceslices"].namespaced
    assert names["resourceclaims"].namespaced
    assert "resourceclaims/status" in names
    core = core_v1(kube).get_api_resources()
    assert "nodes" in {r.name for r in core.resources}


def test_node_crud(api: ApiServerDouble, kube: client.ApiClient) -> None:
    core = core_v1(kube)
    node = core.create_node({"metadata": {"name": NODE, "labels": {"zone": "a"}}})
    assert node.metadata.uid and node.metadata.creation_timestamp
    assert core.read_node(NODE).metadata.uid == node.metadata.uid
    assert [
        n.metadata.name for n in core.list_node(field_selector=f"metadata.name={NODE}").items
    ] == [NODE]
    patched = core.patch_node(NODE, {"metadata": {"labels": {"zone": "b"}}})
    assert patched.metadata.labels == {"zone": "b"}
    assert int(patched.metadata.resource_version) > int(node.metadata.resource_version)
    status = core.delete_node(NODE)
    assert status["kind"] == "Status" and status["status"] == "Success"  # as for core/v1 nodes
    expect_error(lambda: core.read_node(NODE), 404, "NotFound")
    assert api.requests.writes("nodes") == 3


def test_slice_create_get_list_update_delete(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    created = res.create_resource_slice(slice_body())
    assert created.metadata.generation == 1 and created.metadata.uid
    assert res.read_resource_slice("slice-a").spec.devices[0].name == "gpu-0"

    listed = res.list_resource_slice()
    assert listed.metadata.resource_version == created.metadata.resource_version
    assert [s.metadata.name for s in listed.items] == ["slice-a"]

    created.spec.devices.append(client.V1Device(name="gpu-1"))
    updated = res.replace_resource_slice("slice-a", created)
    assert updated.metadata.generation == 2
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    # A no-op update writes nothing: same revision, no event (the "zero writes" contract).
    again = res.replace_resource_slice("slice-a", updated)
    assert again.metadata.resource_version == updated.metadata.resource_version

    deleted = res.delete_resource_slice("slice-a")
    assert deleted.metadata.name == "slice-a"  # resource.k8s.io deletes return the object
    expect_error(lambda: res.read_resource_slice("slice-a"), 404, "NotFound")
    expect_error(lambda: res.delete_resource_slice("slice-a"), 404, "NotFound")


def test_update_conflicts_and_missing(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    first = res.create_resource_slice(slice_body())
    res.patch_resource_slice("slice-a", {"spec": {"pool": {"generation": 1}}})
    status = expect_error(lambda: res.replace_resource_slice("slice-a", first), 409, "Conflict")
    assert "the object has been modified" in status["message"]
    assert status["details"] == {"name": "slice-a", "group": GROUP, "kind": "resourceslices"}
    expect_error(lambda: res.replace_resource_slice("nope", slice_body("nope")), 404, "NotFound")
    expect_error(lambda: res.create_resource_slice(slice_body()), 409, "AlreadyExists")
    mismatch = slice_body("other")
    expect_error(lambda: res.replace_resource_slice("slice-a", mismatch), 400, "BadRequest")


def test_generate_name_truncates_base(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    body = slice_body(None)
    base = "00000-" + "x" * 70 + "-"
    body["metadata"]["generateName"] = base
    created = res.create_resource_slice(body)
    assert len(created.metadata.name) == 63
    assert created.metadata.name.startswith(base[:58])
    assert created.metadata.name[58:].isalnum()
    short = res.create_resource_slice(slice_body(None))
    assert short.metadata.name.startswith(f"{DRIVER}-{NODE}-")
    assert len(short.metadata.name) == len(f"{DRIVER}-{NODE}-") + 5


def test_patch_types(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    custom = custom_objects(kube)
    res.create_resource_slice(slice_body(labels={"a": "1"}))
    merged = custom.patch_cluster_custom_object(
        GROUP, VERSION, "resourceslices", "slice-a", {"metadata": {"labels": {"a": None, "b": "2"}}}
    )
    assert merged["metadata"]["labels"] == {"b": "2"}
    strategic = res.patch_resource_slice("slice-a", {"spec": {"pool": {"generation": 3}}})
    assert strategic.spec.pool.generation == 3 and strategic.metadata.generation == 2
    jp = res.patch_resource_slice(
        "slice-a",
        [
            {"op": "test", "path": "/spec/pool/generation", "value": 3},
            {"op": "replace", "path": "/spec/pool/generation", "value": 4},
            {"op": "add", "path": "/spec/devices/-", "value": {"name": "gpu-1"}},
        ],
    )
    assert jp.spec.pool.generation == 4 and [d.name for d in jp.spec.devices] == ["gpu-0", "gpu-1"]
    expect_error(
        lambda: res.patch_resource_slice(
            "slice-a", [{"op": "test", "path": "/spec/pool/generation", "value": 0}]
        ),
        422,
        "Invalid",
    )
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"pool": {"generation": 9}}}
    expect_error(lambda: res.patch_resource_slice("slice-a", stale), 409, "Conflict")
    expect_error(lambda: res.patch_resource_slice("nope", {"metadata": {}}), 404, "NotFound")


def test_claim_status_subresource_and_server_side_apply(
    api: ApiServerDouble, kube: client.ApiClient
) -> None:
    res = resource_v1(kube)
    created = res.create_namespaced_resource_claim(
        "default", {**claim_body(), "status": {"allocation": allocation("gpu-0")}}
    )
    assert created.status is None or created.status.allocation is None  # create ignores status
    assert created.spec.devices.requests[0].exactly.allocation_mode == "ExactCount"  # defaulted
    assert created.spec.devices.requests[0].exactly.count == 1
    api.update_status(
        "resourceclaims", "claim-a", {"allocation": allocation("gpu-0", "gpu-1")}, "default"
    )

    def apply(*devices: str) -> Any:
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "claim-a", "namespace": "default"},
            "status": {
                "devices": [
                    {
                        "driver": DRIVER,
                        "pool": NODE,
                        "device": d,
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "Prepared",
                                "message": "",
                                "lastTransitionTime": "2026-01-01T00:00:00Z",
                            }
                        ],
                    }
                    for d in devices
                ]
            },
        }
        return res.patch_namespaced_resource_claim_status(
            "claim-a",
            "default",
            body,
            field_manager=DRIVER,
            _content_type="application/apply-patch+yaml",
        )

    two = apply("gpu-0", "gpu-1")
    assert [d.device for d in two.status.devices] == ["gpu-0", "gpu-1"]
    assert two.status.allocation is not None  # apply merged, did not replace the status
    one = apply("gpu-0")
    assert [d.device for d in one.status.devices] == ["gpu-0"]  # own entry left out: removed
    # Another manager's entry survives this manager's applies.
    api.update_status(
        "resourceclaims",
        "claim-a",
        {
            "devices": [
                *one.to_dict()["status"]["devices"][:0],
                {"driver": DRIVER, "pool": NODE, "device": "gpu-1"},
                {"driver": DRIVER, "pool": NODE, "device": "gpu-0"},
            ]
        },
        "default",
    )
    assert [d.device for d in apply("gpu-0").status.devices] == ["gpu-1", "gpu-0"]
    # The main resource ignores status, and the spec is immutable.
    claim = res.read_namespaced_resource_claim("claim-a", "default")
    claim.spec.devices.requests[0].exactly.count = 2
    status = expect_error(
        lambda: res.replace_namespaced_resource_claim("claim-a", "default", claim), 422, "Invalid"
    )
    assert "field is immutable" in status["message"]
    # An allocated device only: status.devices must name allocation results.
    bad = {"devices": [{"driver": DRIVER, "pool": NODE, "device": "gpu-7"}]}
    with pytest.raises(Exception, match="must be an allocated device"):
        api.update_status("resourceclaims", "claim-a", bad, "default")
    expect_error(
        lambda: res.patch_namespaced_resource_claim_status(
            "claim-a", "default", {"status": {}}, _content_type="application/apply-patch+yaml"
        ),
        422,
        "Invalid",
    )


def test_delete_preconditions_and_finalizers(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    created = res.create_resource_slice(slice_body())
    wrong_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it"))
    status = expect_error(
        lambda: res.delete_resource_slice("slice-a", body=wrong_uid), 409, "Conflict"
    )
    assert "Precondition failed: UID in precondition" in status["message"]
    wrong_rv = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    expect_error(lambda: res.delete_resource_slice("slice-a", body=wrong_rv), 409, "Conflict")
    right = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            uid=created.metadata.uid, resource_version=created.metadata.resource_version
        )
    )
    res.delete_resource_slice("slice-a", body=right)
    assert api.get("resourceslices", "slice-a") is None

    body = claim_body()
    body["metadata"]["finalizers"] = ["resource.kubernetes.io/delete-protection"]
    res.create_namespaced_resource_claim("default", body)
    pending = res.delete_namespaced_resource_claim("claim-a", "default")
    assert pending.metadata.deletion_timestamp is not None
    assert res.read_namespaced_resource_claim("claim-a", "default").metadata.deletion_timestamp
    res.patch_namespaced_resource_claim("claim-a", "default", {"metadata": {"finalizers": None}})
    expect_error(lambda: res.read_namespaced_resource_claim("claim-a", "default"), 404, "NotFound")


def test_delete_collection_with_selectors(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body("a1", labels={"tier": "x"}))
    res.create_resource_slice(slice_body("a2", labels={"tier": "y"}))
    res.create_resource_slice(slice_body("b1", node="node-b", labels={"tier": "x"}))
    res.create_resource_slice(slice_body("c1", driver="other.example.com"))
    res.delete_collection_resource_slice(
        field_selector=f"spec.nodeName={NODE},spec.driver={DRIVER}", label_selector="tier=x"
    )
    assert sorted(s["metadata"]["name"] for s in api.objects("resourceslices")) == [
        "a2",
        "b1",
        "c1",
    ]
    res.delete_collection_resource_slice(field_selector=f"spec.driver=={DRIVER}")
    assert [s["metadata"]["name"] for s in api.objects("resourceslices")] == ["c1"]


def names(items: list[Any]) -> list[str]:
    return sorted(i.metadata.name for i in items)


def test_field_and_label_selectors(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body("a1", labels={"tier": "x", "gpu": "h100"}))
    res.create_resource_slice(slice_body("a2", labels={"tier": "y"}))
    res.create_resource_slice(slice_body("b1", node="node-b", labels={"tier": "z"}))
    res.create_resource_slice(slice_body("c1", driver="other.example.com"))

    def listed(**kw: str) -> list[str]:
        return names(res.list_resource_slice(**kw).items)

    assert listed(field_selector=f"spec.driver={DRIVER}") == ["a1", "a2", "b1"]
    assert listed(field_selector=f"spec.driver={DRIVER},spec.nodeName!={NODE}") == ["b1"]
    assert listed(field_selector="metadata.name==a2") == ["a2"]
    assert listed(label_selector="tier in (x,z)") == ["a1", "b1"]
    assert listed(label_selector="tier notin (x,z)") == ["a2", "c1"]
    assert listed(label_selector="gpu") == ["a1"]
    assert listed(label_selector="!gpu,tier") == ["a2", "b1"]
    assert listed(label_selector="tier!=x") == ["a2", "b1", "c1"]
    # Only the field labels kube-apiserver registers for ResourceSlice are accepted.
    status = expect_error(
        lambda: res.list_resource_slice(field_selector="spec.pool.name=x"), 400, "BadRequest"
    )
    assert "field label not supported" in status["message"]
    expect_error(lambda: res.list_resource_slice(label_selector="tier in (x"), 400, "BadRequest")

    res.create_namespaced_resource_claim("default", claim_body("one"))
    res.create_namespaced_resource_claim("other", claim_body("two", namespace="other"))
    assert names(res.list_resource_claim_for_all_namespaces().items) == ["one", "two"]
    assert names(res.list_namespaced_resource_claim("other").items) == ["two"]
    assert names(
        res.list_resource_claim_for_all_namespaces(
            field_selector="metadata.namespace=default"
        ).items
    ) == ["one"]


def test_list_pagination(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    for i in range(5):
        res.create_resource_slice(slice_body(f"s{i}"))
    page = res.list_resource_slice(limit=2)
    seen = names(page.items)
    assert page.metadata.remaining_item_count == 3
    while page.metadata._continue:
        page = res.list_resource_slice(limit=2, _continue=page.metadata._continue)
        seen += names(page.items)
    assert seen == [f"s{i}" for i in range(5)]
    expect_error(lambda: res.list_resource_slice(_continue="garbage!"), 400, "BadRequest")


def take(count: int, func: Any, **kw: Any) -> list[dict[str, Any]]:
    """The first ``count`` watch events (the server timeout only guards against a hang)."""
    w = watch.Watch()
    events: list[dict[str, Any]] = []
    for event in w.stream(func, timeout_seconds=5, **kw):
        events.append(event)
        if len(events) == count:
            w.stop()
    return events


def test_watch_replays_from_resource_version(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    start = res.list_resource_slice().metadata.resource_version
    res.create_resource_slice(slice_body())
    res.create_resource_slice(slice_body("elsewhere", node="node-b"))
    res.patch_resource_slice("slice-a", {"spec": {"pool": {"generation": 1}}})
    res.delete_resource_slice("slice-a")
    res.create_resource_slice(slice_body("last"))
    events = take(
        4, res.list_resource_slice, resource_version=start, field_selector=f"spec.nodeName={NODE}"
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "slice-a"),
        ("MODIFIED", "slice-a"),
        ("DELETED", "slice-a"),
        ("ADDED", "last"),
    ]
    # Without a resourceVersion the watch starts with the current state as ADDED.
    current = take(2, res.list_resource_slice)
    assert [(e["type"], e["object"].metadata.name) for e in current] == [
        ("ADDED", "elsewhere"),
        ("ADDED", "last"),
    ]


def test_watch_streams_live_events_and_selector_transitions(
    api: ApiServerDouble, kube: client.ApiClient
) -> None:
    res = resource_v1(kube)
    rv = res.list_resource_slice().metadata.resource_version
    seen: list[tuple[str, str, str]] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(
            res.list_resource_slice, resource_version=rv, label_selector="tier=x", timeout_seconds=5
        ):
            obj = event["object"]
            seen.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
            if len(seen) == 3:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    assert api.wait_for(lambda a: a.store.open_watches == 1)
    res.create_resource_slice(slice_body(labels={"tier": "x"}))
    res.patch_resource_slice(
        "slice-a", {"metadata": {"labels": {"tier": "y"}}}
    )  # leaves the selector
    res.patch_resource_slice("slice-a", {"metadata": {"labels": {"tier": "x"}}})  # comes back
    thread.join(5)
    assert [(t, n) for t, n, _ in seen] == [
        ("ADDED", "slice-a"),
        ("DELETED", "slice-a"),
        ("ADDED", "slice-a"),
    ]
    revisions = [int(r) for _, _, r in seen]
    assert revisions == sorted(revisions) and len(set(revisions)) == 3


def test_watch_from_compacted_revision_is_gone(
    api: ApiServerDouble, kube: client.ApiClient
) -> None:
    res = resource_v1(kube)
    old = res.create_resource_slice(slice_body()).metadata.resource_version
    res.patch_resource_slice("slice-a", {"spec": {"pool": {"generation": 1}}})
    api.store.compact()
    with pytest.raises(client.ApiException) as info:
        list(watch.Watch().stream(res.list_resource_slice, resource_version=old, timeout_seconds=1))
    assert info.value.status == 410
    assert "too old resource version" in str(info.value.reason)


def test_watch_history_limit_expires_old_revisions(kube: client.ApiClient) -> None:
    with ApiServerDouble(history_limit=2) as small:
        api_client = client.ApiClient(client.Configuration(host=small.url))
        try:
            res = resource_v1(api_client)
            first = res.create_resource_slice(slice_body("s0")).metadata.resource_version
            for i in range(1, 4):
                res.create_resource_slice(slice_body(f"s{i}"))
            with pytest.raises(client.ApiException) as info:
                list(
                    watch.Watch().stream(
                        res.list_resource_slice, resource_version=first, timeout_seconds=1
                    )
                )
            assert info.value.status == 410
        finally:
            api_client.close()


def test_watch_bookmarks_and_initial_events(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body())
    api.bookmark_interval = 0.1
    events = take(
        3,
        res.list_resource_slice,
        allow_watch_bookmarks=True,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        resource_version="",
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK", "BOOKMARK"]
    initial_end = events[1]["raw_object"]["metadata"]
    assert initial_end["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(initial_end["resourceVersion"]) >= int(events[0]["object"].metadata.resource_version)


def test_seeding_helpers(api: ApiServerDouble) -> None:
    node = api.create_node(NODE)
    body = {**claim_body(), "status": {"allocation": allocation("gpu-0")}}
    claim = api.create("resourceclaims", body)
    assert claim["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"
    api.create("resourceslices", slice_body(devices=[device("gpu-0")]))
    assert [s["metadata"]["name"] for s in api.slices(driver=DRIVER, node=NODE)] == ["slice-a"]
    assert api.slices(node="node-b") == []
    assert api.get("nodes", NODE) == node
    api.delete("nodes", NODE)
    assert api.get("nodes", NODE) is None
    with pytest.raises(ValueError, match="unknown resource"):
        api.objects("pods")


def test_selector_and_patch_helpers_directly() -> None:
    """Edge cases of the pure helpers that the HTTP tests do not reach."""
    from dra_driver.testing.apiserver.errors import ApiError
    from dra_driver.testing.apiserver.patching import json_patch, merge_patch
    from dra_driver.testing.apiserver.selectors import (
        label_matcher,
        parse_field_selector,
        parse_label_selector,
    )

    match = label_matcher(parse_label_selector("a.example.com/k in (v1, v2), x!=y,!gone"))
    assert match({"metadata": {"labels": {"a.example.com/k": "v2"}}})
    assert not match({"metadata": {"labels": {"a.example.com/k": "v2", "x": "y"}}})
    assert not match({"metadata": {"labels": {"a.example.com/k": "v2", "gone": ""}}})
    for bad in ("a in ()", "a in x", "=b", "a=b=c", "Bad Key=1"):
        with pytest.raises(ApiError):
            parse_label_selector(bad)
    labels = {"metadata.name": lambda o: str(o["name"])}
    terms = parse_field_selector(r"metadata.name=a\,b", labels)
    assert terms[0].value == "a,b" and terms[0].equal
    with pytest.raises(ApiError):
        parse_field_selector("metadata.name", labels)

    doc = {"a": {"b": [1, 2, 3]}, "c": 1}
    moved = json_patch(
        doc,
        [
            {"op": "move", "from": "/a/b/0", "path": "/a/first"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "remove", "path": "/c"},
        ],
    )
    assert moved == {"a": {"b": [2, 3], "first": 1}, "d": 1}
    assert doc == {"a": {"b": [1, 2, 3]}, "c": 1}  # the input is never mutated
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None}, "d": [1]}) == {
        "a": {"c": 2},
        "d": [1],
    }
