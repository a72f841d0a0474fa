"""The kubelet-facing gRPC surface: registration, DRAPlugin v1/v1beta1, device health.

proto/ holds stubs generated from the repository's proto/ directory (see
codegen.py); plugin.KubeletPlugin puts the servers on their unix sockets and
keeps them there.
"""
