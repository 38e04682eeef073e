"""The edgedl collector (see docs/architecture.md; being built in issue #4)."""
