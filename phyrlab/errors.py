"""The project's error types.

Every error a user can cause is one of these; each is also the built-in type a Python user
would expect (``ValueError`` for bad input), and mapping errors carry the kernel's errno name.
"""

from __future__ import annotations


class PhyrlabError(Exception):
    """Base of every error phyrlab raises on purpose."""


class RangeError(PhyrlabError, ValueError):
    """A physical range list that no layout may hold (zero length, overflow, overlap...)."""


class InputFileError(PhyrlabError, ValueError):
    """A data file (workload, topology, cost model, lspci text, sysfs) that does not load.

    The message names the file and, where known, the line or device.
    """


class DmaMappingError(PhyrlabError):
    """A mapping the kernel would refuse: ``errno`` is the kernel's name (``"ENOMEM"``...)."""

    def __init__(self, errno: str, message: str):
        super().__init__(f"-{errno}: {message}")
        self.errno = errno
