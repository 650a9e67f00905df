"""The demo: a procedural, deliberately messy FER-like dataset with ground truth, and its runner.

- ``params``: :class:`DemoParams` (what to make; defaults and validation) and the faults' constants;
- ``faces``: the face renderer (:func:`render_face`), pure per-image functions;
- ``faults``: planting wrong labels, near-duplicates and invalid files;
- ``affectnet_copy``: the AffectNet-style source (larger colour images, a face box per row);
- ``files``: encoding and writing the files;
- ``generate``: :func:`generate_demo`, which puts these together;
- ``run``: ``fercurate demo --run``, every stage on the demo, each scored against the truth.
"""

from fercurate.demo.faces import render_face
from fercurate.demo.generate import generate_demo
from fercurate.demo.params import AFFECTNET_COLUMNS, DemoParams, DemoResult

__all__ = ["AFFECTNET_COLUMNS", "DemoParams", "DemoResult", "generate_demo", "render_face"]
