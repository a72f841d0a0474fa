"""pluginregistration.Registration servicer: how the kubelet learns about us.

GetInfo must answer at once (the kubelet allows 1 s) and is asked again after
every kubelet restart; NotifyRegistrationStatus carries the kubelet's verdict
and its response content is ignored, so it always answers {} and hands the
verdict to a callback (which schedules a re-registration on failure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .proto import pluginregistration_v1_pb2 as pb
from .proto import pluginregistration_v1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
DRA_V1 = "v1.DRAPlugin"
DRA_V1BETA1 = "v1beta1.DRAPlugin"
HEALTH_V1 = "v1.DRAResourceHealth"
HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"

StatusCallback = Callable[[bool, str], None]


def supported_services(health: bool) -> list[str]:
    """The services on our endpoint, v1 first: the kubelet picks the first one it knows.

    Both health versions are named: a kubelet opens a health stream only for a
    service listed here, 1.37+ picks v1, 1.34-1.36 know only v1alpha1.
    """
    return [DRA_V1, DRA_V1BETA1, *([HEALTH_V1, HEALTH_V1ALPHA1] if health else [])]


class RegistrationServicer(pb_grpc.RegistrationServicer):
    def __init__(
        self,
        driver_name: str,
        endpoint: Path,
        services: list[str],
        on_status: StatusCallback,
    ) -> None:
        if not endpoint.is_absolute():
            raise ValueError(f"endpoint must be an absolute path, got {endpoint}")
        self._info = pb.PluginInfo(
            type=PLUGIN_TYPE,
            name=driver_name,
            endpoint=str(endpoint),
            supported_versions=services,
        )
        self._on_status = on_status

    async def GetInfo(self, request: pb.InfoRequest, context: object) -> pb.PluginInfo:
        log.debug("kubelet asked for plugin info")
        return self._info

    async def NotifyRegistrationStatus(
        self, request: pb.RegistrationStatus, context: object
    ) -> pb.RegistrationStatusResponse:
        try:
            self._on_status(request.plugin_registered, request.error)
        except Exception:
            log.exception("handling the registration status failed")
        return pb.RegistrationStatusResponse()
