"""Claim preparation: ResourceClaims in, CDI specs and checkpointed state out."""
