"""What the first cell of every notebook calls."""

from __future__ import annotations


def setup() -> None:
    """Load BokehJS INLINE (no CDN: plots work offline) and quietly."""
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(resources=INLINE, hide_banner=True)
