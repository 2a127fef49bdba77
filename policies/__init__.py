"""Fusion policies: each module implements one policy of fusion.policy.FusionPolicy, registered by name."""
