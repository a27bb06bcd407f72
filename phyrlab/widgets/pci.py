"""Panels of notebooks 05 (P2P checks) and 07 (this machine)."""

from __future__ import annotations

from functools import lru_cache
from html import escape

import ipywidgets as ipw
import numpy as np
from bokeh.layouts import column
from bokeh.models import Div

from .. import plots, storage
from ..inspect import real_buffer
from ..memory import fragmented_pfns, run_lengths
from ..pci import experiments as ex
from ..pci.topology import Topology
from ..plots import pci as pci_plots
from ..units import PAGE_SIZE, human_bytes
from ..workloads import Buffer
from . import LivePanel, size_slider

#: the order the notebook tells the story in (other files follow, sorted)
TOPOLOGY_ORDER = ("switch-nvme-gpu-nic", "switch-acs-redirect", "dual-socket-haswell",
                  "unlisted-host-bridge", "qemu-q35-vm", "amd-zen-rome")


def topology_options() -> list[str]:
    names = ex.topology_names()
    return [n for n in TOPOLOGY_ORDER if n in names] + \
        [n for n in names if n not in TOPOLOGY_ORDER]


def _device_options(topo: Topology) -> list[tuple[str, str]]:
    return [(ex.device_label(topo, b), b) for b in topo.endpoints()]


def p2p_compute(topology: str, provider: str, client: str, acs: str = "as booted",
                whitelist: bool = True) -> dict[str, dict]:
    """Data for every source of :func:`p2p_panel` (a pair not in the topology: its default)."""
    topo, m = ex.named_variant(topology, acs, bool(whitelist))
    eps = set(topo.endpoints())
    if provider not in eps or client not in eps:
        provider, client = ex.default_pair(topo)
    cols = ex.graph_columns(topo, provider, client)
    cols["heatmap"] = ex.heatmap_columns(topo, m)
    cols["caption"] = {"text": [ex.path_summary(topo, provider, client)]}
    return cols


def p2p_panel(topology: str = "switch-nvme-gpu-nic", provider: str | None = None,
              client: str | None = None, acs: str = "as booted",
              whitelist: bool = True) -> LivePanel:
    """Notebook 05: topology, provider, client, ACS redirect and whitelist -> the drawn path,
    the kernel's checks, and the map-type matrix of every pair."""
    topo = ex.load_named(topology)
    p0, c0 = ex.default_pair(topo)
    provider, client = provider or p0, client or c0
    opts = _device_options(topo)
    controls = {
        "topology": ipw.SelectionSlider(options=topology_options(), value=topology,
                                        description="topology", continuous_update=False,
                                        layout=ipw.Layout(width="520px"),
                                        style={"description_width": "80px"}),
        "provider": ipw.Dropdown(options=opts, value=provider, description="provider",
                                 layout=ipw.Layout(width="420px")),
        "client": ipw.Dropdown(options=opts, value=client, description="client",
                               layout=ipw.Layout(width="420px")),
        "acs": ipw.ToggleButtons(options=list(ex.ACS_SETTINGS), value=acs,
                                 description="ACS redirect"),
        "whitelist": ipw.Checkbox(value=whitelist, description="host-bridge whitelist"),
    }
    first = p2p_compute(topology, provider, client, acs, whitelist)
    graph, gsrc = pci_plots.topology_graph(first)
    checks = pci_plots.checks_div(first["checks"])
    heat, hsrc = pci_plots.map_type_heatmap(first["heatmap"])
    caption = pci_plots.path_div(first["caption"]["text"][0])
    sources = {**gsrc, "heatmap": hsrc}

    def after(data: dict) -> None:
        pci_plots.fit_graph(graph, data["nodes"])
        pci_plots.fit_heatmap(heat, data["heatmap"])
        caption.text = pci_plots.path_html(data["caption"]["text"][0])
        checks.text = pci_plots.checks_html(data["checks"])

    def compute(**values) -> dict:
        data = p2p_compute(**values)
        data["nodes"] = pci_plots._label_columns(data["nodes"])
        return data

    layout = column(graph, caption, checks, column(heat))
    panel = LivePanel(controls, [layout], sources, compute, after)

    def new_topology(change: dict) -> None:
        """Offer the new topology's endpoints (before the panel recomputes, once)."""
        t = ex.load_named(change["new"])
        p, c = ex.default_pair(t)
        panel._held = True
        try:
            for key, value in (("provider", p), ("client", c)):
                controls[key].options = _device_options(t)
                controls[key].value = value
        finally:
            panel._held = False

    # observers run in registration order: put this one before the panel's own
    controls["topology"].unobserve(panel._on_change, names="value")
    controls["topology"].observe(new_topology, names="value")
    controls["topology"].observe(panel._on_change, names="value")
    return panel


# ------------------------------------------------------------------ notebook 07: this machine
PROBE_SIZES = [1 << e for e in range(20, 29)]  # 1 MiB .. 256 MiB


@lru_cache(maxsize=16)
def probe_buffer(size: int) -> tuple[Buffer, str]:
    """A real buffer of ``size`` bytes and its PFNs from ``/proc/self/pagemap``
    (:func:`phyrlab.inspect.real_buffer`), cached with its array so the pages stay put.

    When the kernel hides PFNs (not root) or pagemap is missing, the buffer is the seeded
    geometric model (mean run 4 pages) instead, and the note says so.
    """
    _KEEP.pop(size, None)  # a fresh probe: give the old buffer's pages back first
    got = real_buffer(size)
    if isinstance(got, str):
        pfns = fragmented_pfns(size // PAGE_SIZE, 4.0, seed=0)
        return Buffer("model", pfns, 0, size), \
            f"{got}; showing the seeded geometric model (mean run 4 pages) instead"
    buf, arr = got
    _KEEP[size] = arr
    return buf, f"real buffer of {human_bytes(size)}: physical pages read from " \
        "/proc/self/pagemap"


_KEEP: dict[int, np.ndarray] = {}


def run_histogram(pfns: np.ndarray) -> dict[str, list]:
    """Pages held in runs of each power-of-two length class (1, 2-3, 4-7, ... pages)."""
    runs = run_lengths(pfns)
    order = np.floor(np.log2(np.maximum(runs, 1))).astype(np.int64) if runs.size else runs
    top = int(order.max()) if runs.size else 0
    pages = np.bincount(order, weights=runs, minlength=top + 1) if runs.size else np.zeros(1)
    labels = [f"{1 << k}" if k == 0 else f"{1 << k}-{(2 << k) - 1}" for k in range(top + 1)]
    return {"run": labels, "pages": [int(p) for p in pages],
            "label": [f"{int(p):,}" for p in pages],
            "color": [plots.palette(labels)[0]] * len(labels)}


def contiguity_compute(size: int) -> dict[str, dict]:
    buf, note = probe_buffer(size)
    data = storage.storage_columns(storage.storage_rows(buf))
    data["color"] = plots.palette(data["layout"])
    return {"storage": data, "runs": run_histogram(buf.pfns), "note": {"text": [note]}}


def contiguity_panel(size: int = 1 << 24) -> LivePanel:
    """Notebook 07: probe-buffer size -> where its pages sit (run lengths) and what each
    layout needs to store it."""
    controls = {"size": size_slider(size, 20, 28, description="buffer")}
    first = contiguity_compute(size)
    fig, source = plots.storage_chart(first["storage"])
    runs_fig, runs_src = pci_plots.run_length_chart(first["runs"])
    note = pci_plots.path_div("")
    note.text = f"<i>{first['note']['text'][0]}</i>"

    def after(data: dict) -> None:
        plots.fit_x(fig, data["storage"]["bytes"])
        pci_plots.fit_runs(runs_fig, data["runs"])
        note.text = f"<i>{data['note']['text'][0]}</i>"

    return LivePanel(controls, [column(note, runs_fig, fig)],
                     {"storage": source, "runs": runs_src}, contiguity_compute, after)


def _note(text: str) -> Div:
    return Div(text=f"<p style='font-size: 15px'><i>{escape(text)}</i></p>", width=plots.WIDTH)


def machine_graph(topo: Topology | str):
    """The static tree of a (this machine's) topology, sized to its leaf count; a note
    instead when ``topo`` is the reason sysfs gave none, or it has no endpoint."""
    if isinstance(topo, str):
        return _note(topo)
    if not topo.endpoints():
        return _note(f"{topo.name}: no PCI endpoints to draw")
    p, c = ex.default_pair(topo)
    cols = ex.graph_columns(topo, p, c)
    leaves = sum(cols["nodes"]["leaf"])
    fig, _ = pci_plots.topology_graph(cols, title=f"{topo.name}: PCI tree "
                                      f"(path {ex.short_bdf(p)} → {ex.short_bdf(c)})",
                                      height=max(300, min(2000, 34 * leaves + 80)))
    return fig


def machine_heatmap(topo: Topology | str):
    """The static map-type matrix of a topology (a note when there is nothing to judge)."""
    if isinstance(topo, str):
        return _note(topo)
    if not topo.endpoints():
        return _note(f"{topo.name}: no PCI endpoints, so no pair to judge")
    m = ex.decision_matrix(topo)
    fig, _ = pci_plots.map_type_heatmap(ex.heatmap_columns(topo, m),
                                        title=f"{topo.name}: map type for every pair")
    return fig
