"""Start-up recovery of the claim preparer, and repairs of what it finds broken.

At start, `prepare-started` claims whose instance is dead are rolled back
(CDI spec deleted, entry dropped; the kubelet retries) and orphaned CDI specs
are swept. A checkpoint found corrupted is rebuilt from our CDI specs, and a
prepared claim whose spec vanished gets it rewritten from its record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..inventory import Inventory
from .allocation import spec_devices
from .cdi import CLAIM_UID_RE, CdiError, CdiSpecs
from .checkpoint import CheckpointStore, ClaimRecord, ClaimState, DeviceRecord, LoadReport
from .locks import InstanceRegistry
from .types import ClaimError, ErrorKind

log = logging.getLogger(__name__)


def recover(
    store: CheckpointStore,
    cdi: CdiSpecs,
    instances: InstanceRegistry,
    undo_migs: Callable[[ClaimRecord], list[str]] | None = None,
) -> LoadReport:
    """Load or repair the checkpoint, roll back unfinished claims, sweep orphaned specs.

    undo_migs (dynamic MIG) destroys the MIG instances an unfinished claim made
    (recorded or not) and answers what it could not destroy; such a claim stays
    in the checkpoint, to be rolled back at the next start or retried.
    Blocking; instances must already be acquired.
    """
    report = store.load()

    def roll_back(claims: dict[str, ClaimRecord]) -> tuple[tuple[list[str], list[str]], bool]:
        rolled = []
        for uid, rec in list(claims.items()):
            if rec.state is ClaimState.STARTED and not instances.is_alive(rec.instance):
                failed = undo_migs(rec) if undo_migs is not None else []
                if failed:
                    log.error("claim %s: cannot destroy its MIG devices yet: %s", uid, failed)
                    continue
                if CLAIM_UID_RE.fullmatch(uid):
                    try:
                        cdi.remove(uid)
                    except OSError as e:  # e.g. EROFS: the spec is an orphan for the sweep
                        log.warning("rolling back claim %s: cannot remove its spec: %s", uid, e)
                del claims[uid]
                rolled.append(uid)
        try:
            swept = cdi.sweep(claims, instances.is_alive)
        except OSError as e:
            # A read-only or failing CDI root must not crash-loop the plugin: unprepares
            # that need no write still work, and the sweep is retried in the background.
            report.sweep_failed = f"{type(e).__name__}: {e}"
            log.warning("sweeping orphaned CDI specs failed: %s; retrying later", e)
            swept = []
        return (rolled, swept), bool(rolled)

    rolled, swept = store.update(roll_back)
    reaped = instances.reap()
    claims = store.snapshot()
    log.info(
        "preparer ready: instance %s, %d claim(s) in checkpoint, rolled back %d unfinished "
        "claim(s) %s, swept %d orphaned CDI spec(s)%s",
        instances.id,
        len(claims),
        len(rolled),
        rolled,
        len(swept),
        f", reaped dead instances {reaped}" if reaped else "",
    )
    return report


def rebuild_from_cdi(
    cdi: CdiSpecs, inventory: Callable[[], Inventory], pool: str, instance: str
) -> dict[str, ClaimRecord]:
    """Claims reconstructed from our CDI specs when the checkpoint is corrupted.

    Request names, namespace and name are not in a spec; such records are
    marked rebuilt, and a later prepare of the claim re-reads it from the API.
    """
    try:
        inv: Inventory | None = inventory()
    except Exception:
        inv = None
    out: dict[str, ClaimRecord] = {}
    for uid in cdi.claim_uids():
        try:
            spec = cdi.read(uid)
        except CdiError as e:
            log.error("rebuild: %s", e)
            continue
        if spec is None:
            continue
        devices = []
        for name, cdi_id, admin, uuid in cdi.devices_of(uid, spec):
            dev = inv.device(name) if inv is not None else None
            devices.append(
                DeviceRecord(
                    request_names=(),
                    pool_name=pool,
                    device_name=name,
                    cdi_device_ids=(cdi_id,),
                    uuid=uuid,
                    gpu_uuid=(dev.parent_uuid or dev.uuid) if dev is not None else "",
                    admin_access=admin,
                )
            )
        if devices:
            out[uid] = ClaimRecord(
                uid=uid,
                namespace="",
                name="",
                state=ClaimState.PREPARED,
                devices=tuple(devices),
                instance=instance,
                rebuilt=True,
                updated=time.time(),
            )
    if out:
        log.warning("rebuilt %d claim(s) from CDI specs: %s", len(out), sorted(out))
    return out


def ensure_spec(cdi: CdiSpecs, rec: ClaimRecord, inventory: Callable[[], Inventory]) -> None:
    """Rewrite a prepared claim's spec if it vanished (e.g. someone cleaned /var/run/cdi)."""
    if cdi.exists(rec.uid):
        return
    inv = inventory()
    listings = []
    for d in rec.devices:
        device = inv.device(d.device_name)
        if device is None:
            log.warning(
                "claim %s: CDI spec missing and device %s no longer in the inventory",
                rec.uid,
                d.device_name,
            )
            return
        listings.append((device, d.admin_access))
    try:
        cdi.write(rec.uid, cdi.build(rec.uid, spec_devices(listings)))
        log.warning("claim %s: CDI spec was missing; rewritten", rec.uid)
    except CdiError as e:
        raise ClaimError(
            f"CDI spec of this prepared claim is missing and: {e}",
            ErrorKind.CDI_OR_CHECKPOINT,
        ) from e


def sweep(store: CheckpointStore, cdi: CdiSpecs, instances: InstanceRegistry) -> list[str]:
    """Remove orphaned CDI specs under the checkpoint lock; raises OSError if it cannot."""

    def run(claims: dict[str, ClaimRecord]) -> tuple[list[str], bool]:
        return cdi.sweep(claims, instances.is_alive), False

    return store.update(run)
