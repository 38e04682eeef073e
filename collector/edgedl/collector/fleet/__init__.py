"""Fleet rollouts: the artifact store, rollouts in waves, gates on telemetry (docs/fleet.md)."""
