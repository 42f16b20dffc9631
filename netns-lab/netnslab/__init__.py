"""netnslab: a throwaway network-namespace lab for sitelink tests, benchmarks and demos.

Put the ``netns-lab`` directory on ``sys.path`` and::

    from netnslab import Lab, load_topology, ping
    with Lab(load_topology(".../two-sites.yaml"), mode="plain") as lab:
        print(ping(lab, "hq-host", lab.addr("branch1-host")).median)
"""

from pathlib import Path

from .lab import Capture, CommandError, CommandTimeout, Lab, LabBuildError, LabError, LabTeardownError
from .tools import (
                  Iperf3Error,
                  Iperf3Result,
                  PingResult,
                  ToolError,
                  iperf3,
                  parse_ping,
                  percentile,
                  ping,
                  wait_listening,
)
from .topology import Site, Topology, TopologyError, hub_and_spoke_topology, load_topology, parse_topology, validate

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"

__all__ = [
    "Capture", "CommandError", "CommandTimeout", "Lab", "LabBuildError", "LabError",
    "LabTeardownError", "Iperf3Error", "Iperf3Result", "PingResult", "ToolError", "iperf3",
    "parse_ping", "percentile", "ping", "wait_listening", "Site", "Topology", "TopologyError",
    "hub_and_spoke_topology", "load_topology", "parse_topology", "validate", "TOPOLOGIES",
]
