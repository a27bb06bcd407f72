"""Figures of notebook 01 (storage size)."""

from __future__ import annotations

from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from . import hbar_chart


def storage_chart(data: dict) -> tuple[figure, ColumnDataSource]:
    """Bytes of storage per layout (notebook 01)."""
    source = ColumnDataSource(data)
    fig = hbar_chart(source, y="layout", x="bytes", label="label", name="storage",
                     title="Bytes to store one range list, by layout",
                     x_label="bytes of storage (C structs, padding, chain entries, header)")
    return fig, source
