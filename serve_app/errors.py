"""Service errors and the one table that maps pipeline errors to HTTP.

Route code raises a `ServiceError` subclass (or lets a `pipeline.errors.PipelineError` through); one Starlette
handler renders every error as `{"error": {"code", "message"}}`. Anything else is a server fault: 500
`internal`, logged with its traceback — never reported to the client as its own mistake.
"""

from __future__ import annotations

import logging
import re
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline import errors as pe

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the HTTP API answers on purpose; `code` and `status` are class attributes."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class BadRequest(ServiceError):
    code, status = "bad_request", 400


class MalformedJSON(ServiceError):
    code, status = "malformed_json", 400


class MalformedMultipart(ServiceError):
    code, status = "malformed_multipart", 400


class MissingInput(ServiceError):
    code, status = "missing_input", 400


class EmptyFile(ServiceError):
    code, status = "empty_file", 400


class InvalidInput(ServiceError):
    code, status = "invalid_input", 400


class Unauthorized(ServiceError):
    code, status = "unauthorized", 401


class ForbiddenPath(ServiceError):
    code, status = "forbidden_path", 403


class JobNotFound(ServiceError):
    code, status = "job_not_found", 404


class NotFound(ServiceError):
    code, status = "not_found", 404


class MethodNotAllowed(ServiceError):
    code, status = "method_not_allowed", 405


class JobNotFinished(ServiceError):
    code, status = "job_not_finished", 409


class JobFailed(ServiceError):
    code, status = "job_failed", 409


class JobAlreadyFinished(ServiceError):
    code, status = "job_already_finished", 409


class ResultExpired(ServiceError):
    code, status = "result_expired", 410


class PayloadTooLarge(ServiceError):
    code, status = "payload_too_large", 413


class UnsupportedMedia(ServiceError):
    code, status = "unsupported_media", 415


class InvalidParameter(ServiceError):
    code, status = "invalid_parameter", 422


class Overloaded(ServiceError):
    code, status = "overloaded", 503


class StoreUnavailable(ServiceError):
    """The job store could not be read or written (locked past its timeout, disk error); retry later."""

    code, status = "store_unavailable", 503


class WorkerCrashed(ServiceError):
    """A stage's replica died on every attempt at this job's work (its input likely crashes the worker)."""

    code, status = "worker_crashed", 500


class NotReady(ServiceError):
    code, status = "not_ready", 503


class ClientDisconnected(ServiceError):
    code, status = "client_disconnected", 400


class TooManyJobs(ServiceError):
    code, status = "too_many_jobs", 429


class InsufficientStorage(ServiceError):
    code, status = "insufficient_storage", 507


# Pipeline error class -> (HTTP status). The pipeline's own `.code` is kept so clients see e.g.
# `video_decode_error`, not a generic code. Most specific classes first: lookup walks the MRO.
PIPELINE_STATUS: dict[type[pe.PipelineError], int] = {
    pe.UnsupportedMedia: 415,
    pe.VideoDecodeError: 422,
    pe.VideoTooLarge: 413,
    pe.ImageTooLarge: 413,
    pe.UnsafeArchive: 422,
    pe.InvalidInput: 400,
    pe.NoUsableFrames: 422,
    pe.InvalidParameter: 422,
    pe.FusionError: 422,
    pe.CompareError: 422,
    pe.ModelMissingError: 503,
}


def pipeline_status(exc: pe.PipelineError) -> int:
    """HTTP status for a pipeline error (first match along its class hierarchy; 500 if unmapped)."""
    for cls in type(exc).__mro__:
        if cls in PIPELINE_STATUS:
            return PIPELINE_STATUS[cls]
    return 500


# Exceptions that only a client can cause, raised by the libraries below the routes (the body parser, the
# request stream): each is an answer, not a fault. Anything not listed here or above is a 500.
def _client_faults() -> dict[type[BaseException], type[ServiceError]]:
    from python_multipart.exceptions import FormParserError
    from starlette.requests import ClientDisconnect

    return {ClientDisconnect: ClientDisconnected, FormParserError: MalformedMultipart}


MAX_MESSAGE_CHARS = 400
# An absolute path inside a message (a library's error text): only its last part reaches the client.
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/:]+/)+([^\s'\":]*)")


def public_message(message: str) -> str:
    """A message fit for a client: absolute paths cut to their last part, length capped."""
    cleaned = _ABS_PATH.sub(lambda m: m.group(1) or "/", message)
    return cleaned if len(cleaned) <= MAX_MESSAGE_CHARS else cleaned[: MAX_MESSAGE_CHARS - 3] + "..."


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": public_message(message)}}


def error_response(
    code: str, message: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.code, exc.message, exc.status, exc.headers)


async def handle_pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, pe.PipelineError)
    status = pipeline_status(exc)
    if status >= 500:
        logger.error("pipeline error answered %d on %s: %r", status, request.url.path, exc)
    return error_response(exc.code, str(exc), status)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 (unknown route, wrong method) in our envelope."""
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(code, str(exc.detail), exc.status_code, dict(exc.headers or {}))


async def handle_client_fault(request: Request, exc: Exception) -> JSONResponse:
    """A library error only a client can cause (see `_client_faults`), answered as its service error."""
    for cls in type(exc).__mro__:
        mapped = _client_faults().get(cls)
        if mapped is not None:
            logger.info("client fault on %s %s: %r", request.method, request.url.path, exc)
            message = str(exc) or "the request body ended early (client disconnected)"
            return await handle_service_error(request, mapped(message))
    return await handle_unexpected(request, exc)  # pragma: no cover - registered only for listed classes


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A server fault: a generic answer carrying an error id; the id and the traceback go to the log."""
    error_id = secrets.token_hex(8)
    logger.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(
        "internal", f"internal server error (error id {error_id})", 500, {"X-Error-Id": error_id}
    )


def exception_handlers() -> dict:
    """The handler table handed to `Starlette(exception_handlers=...)`."""
    from starlette.exceptions import HTTPException

    return {
        ServiceError: handle_service_error,
        pe.PipelineError: handle_pipeline_error,
        HTTPException: handle_http_exception,
        **dict.fromkeys(_client_faults(), handle_client_fault),
        Exception: handle_unexpected,
    }


def job_error_from_exception(exc: BaseException) -> tuple[str, str]:
    """(code, message) stored on a failed job: domain errors keep their code, the rest is `internal`."""
    exc = unwrap_remote(exc)
    if isinstance(exc, pe.PipelineError):
        return exc.code, str(exc)
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    # The exception text may carry pids, IPs, actor ids or paths: it goes to the log (keyed by job id), the
    # client gets a fixed sentence.
    return "internal", "an internal error stopped this job; the service log has the details under its job id"


def unwrap_remote(exc: BaseException) -> BaseException:
    """The user exception behind a Ray `RayTaskError` (it carries the original as `.cause`)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
