"""Few-shot generation over cached fused tokens."""
