"""Streaming pipelines: vad -> window -> features -> model -> postprocess (issue #3)."""
