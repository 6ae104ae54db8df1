"""A second, independent painter of the shape world (``painter``): analytic shapes supersampled in numpy,
other shades, sizes and placement, so the demo model can be tested on pictures its own generator did not make."""

from . import painter

__all__ = ["painter"]
