"""Test and demo tooling shipped with the driver: fake NVML, API server double, kubelet client."""
