"""Python SDK of the photo-serving bridge: ``with Client() as c: c.predict("classifier", "cat.jpg")``."""

from serving_client._version import __version__
from serving_client.client import REPORT_KINDS, Client, Photo
from serving_client.errors import (
    BadRequest,
    Conflict,
    ConnectionError,
    Forbidden,
    GatewayTimeout,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ServingError,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from serving_client.jobs import Job
from serving_client.models import (
    AccuracyReport,
    Comparison,
    Feedback,
    JobState,
    JobStatus,
    ModelResult,
    Prediction,
    Report,
)

__all__ = [
    "REPORT_KINDS",
    "AccuracyReport",
    "BadRequest",
    "Client",
    "Comparison",
    "Conflict",
    "ConnectionError",
    "Feedback",
    "Forbidden",
    "GatewayTimeout",
    "Job",
    "JobFailed",
    "JobState",
    "JobStatus",
    "JobTimeout",
    "ModelResult",
    "NotFound",
    "PayloadTooLarge",
    "Photo",
    "Prediction",
    "Report",
    "ServiceUnavailable",
    "ServingError",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "__version__",
]
