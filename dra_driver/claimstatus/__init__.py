"""ResourceClaim.status.devices for this driver's prepared devices (KEP-4817, GA in 1.37).

entries.py  prepared device + health verdict -> one status.devices entry (pure)
api.py      the server-side apply and read of a claim's status (blocking)
writer.py   keeps every prepared claim's entries current, off the request path
hook.py     the Preparer wrapper that tells the writer what was (un)prepared
options.py  the writer's frozen config
"""
