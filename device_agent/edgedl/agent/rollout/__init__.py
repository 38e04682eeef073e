"""Model versions on the device: the store, rollout strategies, rollback."""
