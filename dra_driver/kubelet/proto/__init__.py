"""Generated protobuf/gRPC modules for the kubelet plugin APIs.

Do not edit: regenerate with `python -m dra_driver.kubelet.codegen`.
"""
