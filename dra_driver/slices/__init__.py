"""ResourceSlice building (pure) and publishing (reconciler against the API server)."""
