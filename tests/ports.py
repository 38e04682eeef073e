"""Ports for the servers the tests start (brokers, agents, collectors).

The demo's :func:`edgedl.demo.processes.free_port`: a port below the kernel's ephemeral
range, so that no client connection of the suite takes it between the check and the moment
a server subprocess binds it (bind-to-port-0 ports come from that range, and lose that race
now and then on a busy machine).
"""

from edgedl.demo.processes import free_port

__all__ = ["free_port"]
