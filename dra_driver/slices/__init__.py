"""ResourceSlice building (pure) and publishing (reconciler against the API server).

builder.py  inventory + taints -> desired slices (pure); taints.py health -> taints (pure)
plan.py     desired + stored slices -> the writes that converge them (pure)
publisher.py SlicePublisher: the reconcile and watch loops; cache.py what is stored
api.py      the REST calls, failures as ApiError/ApiUnreachable; validation.py, quantity.py
options.py  PublisherConfig
"""
