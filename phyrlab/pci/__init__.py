"""PCI topology and the peer-to-peer DMA decision (drivers/pci/p2pdma.c, Linux v6.2).

``load(path)`` / ``parse_lspci_tv(text)`` / ``from_sysfs(root)`` build a :class:`Topology`;
``p2pdma_distance(topo, provider, clients)`` answers ``(map_type, distance, reason)`` as
``pci_p2pdma_distance_many()`` / ``calc_map_type_and_dist()`` would.
"""

from phyrlab.pci import experiments
from phyrlab.pci.lspci import parse_lspci_tv
from phyrlab.pci.p2pdma import (
    PCI_P2PDMA_WHITELIST,
    REQ_SAME_HOST_BRIDGE,
    Check,
    MapType,
    P2PDistance,
    P2PTrace,
    RangeClass,
    WhitelistEntry,
    calc_map_type_and_dist,
    classify_ranges,
    cpu_supports_p2pdma,
    find_p2p_bar,
    find_p2p_bars,
    host_bridge_whitelist,
    map_types_idx,
    p2p_bar_table,
    p2pdma_bus_offset,
    p2pdma_distance,
    pci_bridge_has_acs_redir,
    pci_p2pdma_distance_many,
    pci_p2pdma_map_type,
    trace_map_type,
)
from phyrlab.pci.sysfs import from_sysfs
from phyrlab.pci.topology import (
    ACS_BITS,
    PCI_ACS_CR,
    PCI_ACS_EC,
    PCI_ACS_REDIR,
    PCI_ACS_RR,
    Acs,
    Bar,
    Cpu,
    DevKind,
    HostBridge,
    PciDev,
    Topology,
    format_bdf,
    from_dict,
    load,
    parse_bdf,
)

__all__ = [
    "ACS_BITS", "Acs", "Bar", "Check", "Cpu", "DevKind", "HostBridge", "MapType",
    "P2PDistance", "P2PTrace", "PCI_ACS_CR", "PCI_ACS_EC", "PCI_ACS_REDIR", "PCI_ACS_RR",
    "PCI_P2PDMA_WHITELIST", "PciDev", "REQ_SAME_HOST_BRIDGE", "RangeClass", "Topology",
    "WhitelistEntry", "calc_map_type_and_dist", "classify_ranges", "cpu_supports_p2pdma",
    "experiments", "find_p2p_bar", "find_p2p_bars", "format_bdf", "from_dict", "from_sysfs",
    "host_bridge_whitelist", "load", "map_types_idx", "p2p_bar_table", "p2pdma_bus_offset",
    "p2pdma_distance", "parse_bdf", "parse_lspci_tv", "pci_bridge_has_acs_redir",
    "pci_p2pdma_distance_many", "pci_p2pdma_map_type", "trace_map_type",
]
