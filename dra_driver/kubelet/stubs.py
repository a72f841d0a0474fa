"""Typed entry points into the generated *_pb2_grpc modules.

grpcio-tools generates no type hints for service code; these aliases give the
rest of the package (checked with mypy --strict) typed signatures for the few
generated callables it uses. Message types come typed from the *_pb2.pyi files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc

from .proto import (
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2_grpc,
    drahealth_v1_pb2_grpc,
    drahealth_v1alpha1_pb2_grpc,
    pluginregistration_v1_pb2_grpc,
)

AddToServer = Callable[[Any, grpc.aio.Server], None]
StubFactory = Callable[[grpc.aio.Channel], Any]

add_dra_v1 = cast(AddToServer, dra_v1_pb2_grpc.add_DRAPluginServicer_to_server)
add_dra_v1beta1 = cast(AddToServer, dra_v1beta1_pb2_grpc.add_DRAPluginServicer_to_server)
add_health_v1alpha1 = cast(
    AddToServer, drahealth_v1alpha1_pb2_grpc.add_DRAResourceHealthServicer_to_server
)
add_health_v1 = cast(AddToServer, drahealth_v1_pb2_grpc.add_DRAResourceHealthServicer_to_server)
add_registration = cast(
    AddToServer, pluginregistration_v1_pb2_grpc.add_RegistrationServicer_to_server
)

dra_v1_stub = cast(StubFactory, dra_v1_pb2_grpc.DRAPluginStub)
dra_v1beta1_stub = cast(StubFactory, dra_v1beta1_pb2_grpc.DRAPluginStub)
health_v1alpha1_stub = cast(StubFactory, drahealth_v1alpha1_pb2_grpc.DRAResourceHealthStub)
health_v1_stub = cast(StubFactory, drahealth_v1_pb2_grpc.DRAResourceHealthStub)
registration_stub = cast(StubFactory, pluginregistration_v1_pb2_grpc.RegistrationStub)
