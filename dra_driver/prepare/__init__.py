"""Claim preparation: ResourceClaims in, CDI specs and checkpointed state out.

preparer.py   ClaimPreparer: the per-claim transaction (reserve, apply, spec, record)
allocation.py claim + inventory + health -> devices and NVML settings (pure)
recovery.py   start-up roll back and sweep; rebuild from CDI; missing-spec repair
config.py     the opaque GpuConfig/MigDeviceConfig parameters (pure)
cdi.py, checkpoint.py, files.py, locks.py   the files it owns and their locks
sources.py    where claims are read from; types.py the interface the kubelet calls
options.py    PreparerConfig; crashpoints.py the crash test hook
"""
