"""The one exception tree of tierlm.

::

    TierlmError                      every error tierlm raises; carries request_id/tier/backend
    ├── ConfigError                  a bad configuration value (names the key)
    ├── MissingDependency            an optional extra is not installed (names the pip line)
    ├── InvalidRequest               the caller sent something unusable (HTTP 400)
    │   └── PayloadTooLarge          over a configured size limit (HTTP 413)
    ├── AuthError                    missing/unknown API key (401) ...
    │   └── PermissionDenied         ... or a key not allowed to do this (403)
    ├── PolicyError                  routing cannot satisfy the request's constraints
    │   ├── NoEligibleBackend        nothing may answer (privacy, capabilities, tier pins; 403:
    │   │                            a refusal, never a retryable status)
    │   └── BudgetExceeded           a money budget forbids a pinned external call (HTTP 402)
    ├── ModelError                   a local model cannot be found, fetched or loaded
    │   ├── ModelNotFound
    │   └── InsufficientMemory       "needs ~X GB, Y GB free"
    ├── BackendError                 one attempt against one backend failed
    │   ├── BackendUnavailable       connection refused/reset, DNS, circuit open (retryable)
    │   ├── ModelUnavailable         a local backend's model is missing or does not fit (503)
    │   ├── BackendTimeout           connect / first token / stall / total timeout (retryable)
    │   ├── RateLimited              429; ``retry_after`` seconds when the backend said (retryable)
    │   ├── Overloaded               queue full (local) or 503 (retryable)
    │   ├── ServerError              5xx (retryable)
    │   ├── ContextLengthExceeded    prompt too long for this model (try a larger one)
    │   ├── ContentPolicyError       the provider refused the content (never retried)
    │   ├── BackendAuthError         the backend rejected our credentials
    │   ├── BackendBadRequest        the backend rejected the request itself (4xx)
    │   └── ProtocolError            malformed answer, bad chunk, stream ended early
    └── AllAttemptsFailed            every candidate of the plan failed; holds each failure

Every error has ``status`` (the HTTP status the gateway answers with) and ``code`` (the
OpenAI-style error ``type``/``code``), so the edge maps errors without a table of its own.
"""

from __future__ import annotations

from typing import Any


class TierlmError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        tier: str | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.tier = tier
        self.backend = backend

    def context(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("request_id", self.request_id),
                ("tier", self.tier),
                ("backend", self.backend),
            )
            if v is not None
        }

    def to_openai(self) -> dict[str, Any]:
        """OpenAI-shaped error body: ``{"error": {"message", "type", "code", ...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": _OPENAI_TYPE.get(self.status, "api_error"),
                "code": self.code,
                "param": None,
                **self.context(),
            }
        }


_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ConfigError(TierlmError):
    code = "config_error"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"config key `{key}`: {message}" if key else message)
        self.key = key


class MissingDependency(TierlmError):
    code = "missing_dependency"

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the optional extra '{extra}': pip install 'tierlm[{extra}]'"
        )
        self.extra = extra


class InvalidRequest(TierlmError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class AuthError(TierlmError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(AuthError):
    status = 403
    code = "permission_denied"


class PolicyError(TierlmError):
    status = 400
    code = "policy_error"


class NoEligibleBackend(PolicyError):
    status = 403
    code = "no_eligible_backend"


class BudgetExceeded(PolicyError):
    status = 402
    code = "budget_exceeded"


class ModelError(TierlmError):
    status = 503
    code = "model_error"


class ModelNotFound(ModelError):
    status = 404
    code = "model_not_found"


class InsufficientMemory(ModelError):
    code = "insufficient_memory"


class BackendError(TierlmError):
    """One attempt failed. ``retryable`` says whether trying again (later) may help."""

    status = 502
    code = "backend_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        tier: str | None = None,
        request_id: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message, backend=backend, tier=tier, request_id=request_id)
        self.upstream_status = upstream_status


class BackendUnavailable(BackendError):
    status = 503
    code = "backend_unavailable"
    retryable = True


class ModelUnavailable(BackendError):
    """A local backend cannot load its model (file missing, not enough memory): a deployment
    fault, so the executor moves on at once and the client gets a 503 naming the backend.

    The message carries no server paths; ``advice`` (for local faces such as the CLI) holds
    the whole :class:`ModelError` text, what to do included.
    """

    status = 503
    code = "model_unavailable"

    def __init__(self, cause: ModelError, *, backend: str) -> None:
        # a ModelError's first line names no server path (models.py keeps them to the advice)
        first = cause.message.splitlines()[0] if cause.message else type(cause).__name__
        super().__init__(f"backend '{backend}' cannot load its model: {first}", backend=backend)
        self.advice = cause.message


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"
    retryable = True


class RateLimited(BackendError):
    status = 429
    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Overloaded(BackendError):
    status = 503
    code = "overloaded"
    retryable = True


class ServerError(BackendError):
    status = 502
    code = "upstream_server_error"
    retryable = True


class ContextLengthExceeded(BackendError):
    status = 400
    code = "context_length_exceeded"


class ContentPolicyError(BackendError):
    status = 400
    code = "content_policy_violation"


class BackendAuthError(BackendError):
    status = 502
    code = "upstream_auth_error"


class BackendBadRequest(BackendError):
    status = 400
    code = "upstream_bad_request"


class ProtocolError(BackendError):
    status = 502
    code = "upstream_protocol_error"
    retryable = True


class AllAttemptsFailed(TierlmError):
    """Every candidate failed. ``errors`` holds each attempt's error, in order.

    The status is that of the most telling failure (a caller error beats an outage).
    """

    code = "all_attempts_failed"

    def __init__(self, errors: list[BackendError], *, request_id: str | None = None) -> None:
        parts = "; ".join(f"{e.backend or '?'}: {e.message}" for e in errors)
        super().__init__(f"every candidate failed ({parts})", request_id=request_id)
        self.errors = errors
        caller_errors = [e for e in errors if 400 <= e.status < 500 and e.status != 429]
        worst = caller_errors[-1] if caller_errors else (errors[-1] if errors else None)
        self.status = worst.status if worst else 503
        if worst is not None:
            self.code = worst.code
