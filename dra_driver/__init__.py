"""DRA kubelet plugin for NVIDIA GPUs and MIG devices."""

__version__ = "0.1.0"
