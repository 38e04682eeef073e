"""Streaming pipelines: vad -> window -> features -> model -> postprocess."""
