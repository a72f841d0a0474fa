"""Device health: one per-device state feeding the kubelet stream, taints and metrics."""
