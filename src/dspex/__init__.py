"""dspex: the production runtime for DSPy programs.

Typed signatures with enforced constraints, programs run as dependency graphs of modules, every
execution recorded, retries, deadlines, failover and batches.

Example:
    >>> import dspex
    >>> sig = dspex.Signature.parse("question: str -> answer: str, confidence: probability")
    >>> sig.validate_outputs({"answer": "Paris", "confidence": 0.9})
    {'answer': 'Paris', 'confidence': 0.9}

Names are imported lazily so that ``import dspex`` (and the CLI) start fast and never import DSPy
until a DSPy feature is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dspex.errors import (
    AllBackendsFailedError,
    BackendError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    DspexError,
    GraphCycleError,
    GraphError,
    MaxErrorsExceeded,
    MetricError,
    NotFoundError,
    OptimizationError,
    ProgramStateError,
    PromotionRefusedError,
    SignatureError,
    StorageError,
    ValidationError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "HealthReport": "dspex.actions.health",
    "CleanupReport": "dspex.actions.cleanup",
    "upgrade_database": "dspex.actions.database",
    "DatabaseStatus": "dspex.actions.database",
    "Signature": "dspex.signatures.signature",
    "validate_signature": "dspex.actions.validate_signature",
    "ValidationReport": "dspex.actions.validate_signature",
    "Program": "dspex.engine.program",
    "Plan": "dspex.engine.analysis",
    "Engine": "dspex.engine.engine",
    "RunResult": "dspex.engine.engine",
    "MockBackend": "dspex.backends.mock",
    "DspyBackend": "dspex.backends.dspy_backend",
    "OpenAIBackend": "dspex.backends.openai_backend",
    "Runtime": "dspex.runtime",
    "ExecutionResult": "dspex.actions.models",
    "ExecutionDetail": "dspex.actions.models",
    "ProgramInfo": "dspex.actions.models",
    "OptimizationInfo": "dspex.actions.optimize",
    "OptimizationEvent": "dspex.actions.optimize",
    "TrialInfo": "dspex.actions.optimize",
    "TuneProposal": "dspex.actions.tune",
    "BatchOptions": "dspex.batch.options",
    "BatchResult": "dspex.actions.batch",
    "BatchEstimate": "dspex.actions.estimate",
    "BatchStats": "dspex.batch.stats",
    "ProgressEvent": "dspex.batch.progress",
    # evaluation, promotion and datasets
    "EvaluationResult": "dspex.actions.evaluate",
    "ComparisonResult": "dspex.actions.evaluate",
    "PromotionResult": "dspex.actions.promote",
    "DatasetExport": "dspex.actions.dataset",
    "Metric": "dspex.metrics",
    "resolve_metric": "dspex.metrics",
    # what the CLI and the service need, so they never reach below the public API
    "Backend": "dspex.backends.base",
    "BatchHandle": "dspex.runtime",
    "BatchInfo": "dspex.runtime",
    "EvaluationHandle": "dspex.runtime",
    "ExecutionHandle": "dspex.runtime",
    "OptimizationHandle": "dspex.runtime",
    "ExecutionPage": "dspex.actions.models",
    "GraphInfo": "dspex.actions.models",
    "BatchProfile": "dspex.actions.models",
    "PredictRequest": "dspex.backends.base",
    "parse_age": "dspex.actions.cleanup",
    "load_yaml_spec": "dspex.engine.spec",
    "Strategy": "dspex._strategies",
    "CacheMode": "dspex._strategies",
    "CacheStats": "dspex.actions.cache",
    "CacheCleared": "dspex.actions.cache",
    # the statuses of the result models' ``status`` fields (StrEnums: they compare equal to text)
    "ExecutionStatus": "dspex.records",
    "OptimizationStatus": "dspex.records",
    "ProgramStatus": "dspex.records",
    "StepStatus": "dspex.records",
    # a streamed execution's events (Runtime.stream)
    "ExecutionDone": "dspex.actions.streaming",
    "ExecutionEvent": "dspex.actions.streaming",
    "ExecutionStarted": "dspex.actions.streaming",
    "StepFinished": "dspex.actions.streaming",
    "StepStarted": "dspex.actions.streaming",
    "StreamRetry": "dspex.actions.streaming",
    "TokenDelta": "dspex.actions.streaming",
    # process-wide: for a process that runs dspex alone (never called by the library itself)
    "tune_process": "dspex.tuning",
}

__all__ = [
    "AllBackendsFailedError",
    "Backend",
    "BackendError",
    "BatchEstimate",
    "BatchHandle",
    "BatchInfo",
    "BatchOptions",
    "BatchProfile",
    "BatchResult",
    "BatchStats",
    "CacheCleared",
    "CacheMode",
    "CacheStats",
    "CircuitOpenError",
    "CleanupReport",
    "ComparisonResult",
    "ConfigError",
    "DatabaseStatus",
    "DatasetExport",
    "DeadlineExceeded",
    "DspexError",
    "DspyBackend",
    "Engine",
    "EvaluationHandle",
    "EvaluationResult",
    "ExecutionDetail",
    "ExecutionDone",
    "ExecutionEvent",
    "ExecutionHandle",
    "ExecutionPage",
    "ExecutionResult",
    "ExecutionStarted",
    "ExecutionStatus",
    "GraphCycleError",
    "GraphError",
    "GraphInfo",
    "HealthReport",
    "MaxErrorsExceeded",
    "Metric",
    "MetricError",
    "MockBackend",
    "NotFoundError",
    "OpenAIBackend",
    "OptimizationError",
    "OptimizationEvent",
    "OptimizationHandle",
    "OptimizationInfo",
    "OptimizationStatus",
    "Plan",
    "PredictRequest",
    "Program",
    "ProgramInfo",
    "ProgramStateError",
    "ProgramStatus",
    "ProgressEvent",
    "PromotionRefusedError",
    "PromotionResult",
    "RunResult",
    "Runtime",
    "Signature",
    "SignatureError",
    "StepFinished",
    "StepStarted",
    "StepStatus",
    "StorageError",
    "Strategy",
    "StreamRetry",
    "TokenDelta",
    "TrialInfo",
    "TuneProposal",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "load_yaml_spec",
    "parse_age",
    "resolve_metric",
    "tune_process",
    "upgrade_database",
    "validate_signature",
]

if TYPE_CHECKING:
    from dspex._strategies import CacheMode, Strategy
    from dspex.actions.cache import CacheCleared, CacheStats
    from dspex.actions.cleanup import CleanupReport, parse_age
    from dspex.actions.database import DatabaseStatus, upgrade_database
    from dspex.actions.dataset import DatasetExport
    from dspex.actions.estimate import BatchEstimate
    from dspex.actions.evaluate import ComparisonResult, EvaluationResult
    from dspex.actions.health import HealthReport
    from dspex.actions.models import (
        BatchProfile,
        ExecutionDetail,
        ExecutionPage,
        ExecutionResult,
        GraphInfo,
        ProgramInfo,
    )
    from dspex.actions.optimize import OptimizationEvent, OptimizationInfo, TrialInfo
    from dspex.actions.promote import PromotionResult
    from dspex.actions.streaming import (
        ExecutionDone,
        ExecutionEvent,
        ExecutionStarted,
        StepFinished,
        StepStarted,
        StreamRetry,
        TokenDelta,
    )
    from dspex.actions.tune import TuneProposal
    from dspex.actions.validate_signature import ValidationReport, validate_signature
    from dspex.backends.base import Backend, PredictRequest
    from dspex.backends.dspy_backend import DspyBackend
    from dspex.backends.mock import MockBackend
    from dspex.backends.openai_backend import OpenAIBackend
    from dspex.batch.options import BatchOptions
    from dspex.batch.progress import ProgressEvent
    from dspex.batch.stats import BatchStats
    from dspex.engine.analysis import Plan
    from dspex.engine.engine import Engine, RunResult
    from dspex.engine.program import Program
    from dspex.engine.spec import load_yaml_spec
    from dspex.metrics import Metric, resolve_metric
    from dspex.records import ExecutionStatus, OptimizationStatus, ProgramStatus, StepStatus
    from dspex.runtime import (
        BatchHandle,
        BatchInfo,
        EvaluationHandle,
        ExecutionHandle,
        OptimizationHandle,
        Runtime,
    )
    from dspex.signatures.signature import Signature
    from dspex.tuning import tune_process


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
