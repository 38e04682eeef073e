"""``edgedl demo``: the whole loop on one machine, from training to a drift alert.

It trains the digits example, converts it, starts a broker (when none answers), a collector
and an agent as separate processes, streams digits through the agent, shifts them, and shows
the collector's drift alert. It needs every extra (``pip install 'edgedl[all]'``).
"""
