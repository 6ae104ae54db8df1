"""BLIP-2 on a Ray cluster: caption, answer and embed whole image collections with Ray Data.

- :class:`Blip2Predictor`: the ``map_batches`` callable class (one host per actor);
- :func:`annotate`: a ``ray.data.Dataset`` with an ``image`` column -> the same with result columns;
- :func:`run`: a whole job from SOURCE arguments to Parquet shards, resumable (``blip2 ray ...``).
"""

from .jobs import Summary, annotate, run
from .predictor import TASKS, Blip2Predictor

__all__ = ["TASKS", "Blip2Predictor", "Summary", "annotate", "run"]
