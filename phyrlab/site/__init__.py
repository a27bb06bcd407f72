"""Kernel-free interactive pages for ``make report``: one module per notebook topic.

Each module offers ``site_page() -> bokeh layout`` whose bokeh widgets switch, with
``CustomJS``, between results precomputed in Python: the page needs no kernel and no network.
Register it in :data:`phyrlab.report.SITE_PAGES`.
"""
