"""The edgedl device agent (see docs/architecture.md; being built in issue #3)."""
