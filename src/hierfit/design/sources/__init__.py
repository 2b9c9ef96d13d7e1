"""Streaming sources: rows read as a fold over batches instead of one in-memory frame.

``hierfit.fit`` hands everything that is not a pandas DataFrame -- a ``pyarrow.Table``, a
Parquet file, folder or glob, a Dask DataFrame -- to :func:`open_source`; the streamed design
pass (:mod:`hierfit.design.streamed`) and the mixed engine's statistics pass then read it
with :meth:`Source.fold`. Nothing here imports pyarrow or Dask at import time.
"""

from hierfit.design.sources.base import Batch, FramePiece, SourceInfo, TrainingRowsUnavailableError
from hierfit.design.sources.runner import FoldObserver, observe_folds
from hierfit.design.sources.source import DEFAULT_BATCH_ROWS, Source, dask_client, is_dask_frame, is_source, open_source
from hierfit.design.sources.sums import CompensatedSum

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "Batch",
    "CompensatedSum",
    "FoldObserver",
    "FramePiece",
    "Source",
    "SourceInfo",
    "TrainingRowsUnavailableError",
    "dask_client",
    "is_dask_frame",
    "is_source",
    "observe_folds",
    "open_source",
]
