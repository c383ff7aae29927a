"""Every error Areion raises derives from `AreionError`.

The tree splits "you configured or called it wrong" from "the world failed"::

    AreionError
    ├── ConfigError                 the configuration is invalid (raised at start)
    │   └── ModelNotInstalledError  (cache.embedding) the embedding model is missing
    ├── RequestError                the caller asked for something wrong        400
    │   ├── AuthenticationError     missing or unknown API key                   401
    │   ├── ModelNotAllowedError    the API key may not use that model            403
    │   ├── UnknownModelError       no model group or route of that name         404
    │   ├── ReplayMissError         the replay recording has no such prompt      404
    │   ├── RunNotFoundError        (agent.runner) no such run for the caller     404
    │   ├── RunExistsError          (agent.runner) the caller's run id is taken   409
    │   ├── RunBusyError            (agent.leases) another driver holds the run   409
    │   ├── CacheNotFoundError      (server.cache) no such entry or hit, tier off 404
    │   ├── ResponseNotFoundError   (server.responses) no such stored response    404
    │   ├── NoSuchFileError         (server.files) no such file for the caller    404
    │   ├── BatchNotFoundError      (server.batches) no such batch for the caller 404
    │   ├── NoQueueError            (jobs.service) the store keeps no job queue   501
    │   ├── AdminDisabledError      (server.admin) no admin keys configured       404
    │   ├── AdminOnlyError          (server.admin) a tenant key on the admin API  403
    │   ├── BodyTooLargeError       (server.guard) past server.max_body_bytes     413
    │   ├── MetricsKeyRequiredError (server.ops) a tenant key on /metrics         403
    │   ├── KeyNotFoundError        (control.keys) no such API key                404
    │   └── KeyConflictError        (control.keys) the key name is taken          409
    ├── LimitError                  Areion's own limits refused the call
    │   ├── RateLimitExceededError  a key, tenant or model rate limit; `retry_after` 429
    │   ├── BudgetExceededError     the call's estimated cost does not fit a budget 402
    │   └── OverloadedError         (control.lanes) shed by a full lane; `retry_after` 503
    ├── BackendUnavailableError     a shared backend (Redis, PostgreSQL) is down  503
    ├── FencedError                 another replica has taken a run over          409
    └── UpstreamError               a provider failed                            502
        ├── RateLimitedError        throttled; carries `retry_after`             429
        ├── ProviderUnavailableError no deployment can take the call            503
        ├── ProviderTimeoutError    connect, first-byte or total timeout         504
        └── StreamInterruptedError  a stream broke after its first byte         502

The classes in parentheses live next to the code that raises them. Each class carries
the HTTP `status`, the OpenAI error `type` and a short `code`,
so the server maps any of them to an OpenAI-shaped error body without a table.
"""

from __future__ import annotations

__all__ = [
    "AreionError",
    "AuthenticationError",
    "BackendUnavailableError",
    "BudgetExceededError",
    "ConfigError",
    "FencedError",
    "LimitError",
    "ModelNotAllowedError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitExceededError",
    "RateLimitedError",
    "ReplayMissError",
    "RequestError",
    "StreamInterruptedError",
    "UnknownModelError",
    "UpstreamError",
]


class AreionError(Exception):
    """Root of every error Areion raises."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(AreionError):
    """The configuration is invalid; the message names the field and the fix."""

    code = "invalid_config"


class RequestError(AreionError):
    """The request is malformed or asks for something impossible."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(RequestError):
    """The API key is missing or unknown."""

    status = 401
    code = "invalid_api_key"


class UnknownModelError(RequestError):
    """No model group or route has the requested name."""

    status = 404
    code = "model_not_found"


class ModelNotAllowedError(RequestError):
    """The API key is not allowed to use the model it asked for (its `models` list)."""

    status = 403
    code = "model_not_allowed"


class ReplayMissError(RequestError):
    """A replay provider was asked a prompt its recording does not hold."""

    status = 404
    code = "replay_prompt_not_found"


class LimitError(AreionError):
    """A limit configured in Areion refused the call before any model was asked."""

    status = 429
    type = "rate_limit_error"
    code = "limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds after which the same call may fit (None: not before a limit changes)."""
        self.headers = headers or {}
        """Response headers that describe the limit (`x-ratelimit-*`)."""


class RateLimitExceededError(LimitError):
    """A requests- or tokens-per-minute limit of a key, tenant or model is used up."""

    code = "rate_limit_exceeded"


class BudgetExceededError(LimitError):
    """The call's estimated cost does not fit a budget (per request, day or month)."""

    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, headers=headers)
        self.budget = budget
        """Which budget: `request`, `day` or `month`."""


class BackendUnavailableError(AreionError):
    """A backend Areion keeps shared state in (Redis: limits and budgets; PostgreSQL: the
    ledger) cannot be reached; the call is refused rather than served unlimited or
    unbilled. `retry_after`: when to try again."""

    status = 503
    type = "server_error"
    code = "backend_unavailable"

    def __init__(self, message: str, *, backend: str, retry_after: float | None = 1.0) -> None:
        super().__init__(message)
        self.backend = backend
        """`redis` or `postgres`."""
        self.retry_after = retry_after


class FencedError(AreionError):
    """A checkpoint carried an older fencing token than the run's: another replica has
    taken the run over (its lease had expired), and this one must stop driving it."""

    status = 409
    type = "invalid_request_error"
    code = "run_taken_over"


class UpstreamError(AreionError):
    """A provider failed to answer."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        upstream_status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.upstream_status = upstream_status
        if retryable is not None:
            self.retryable = retryable


class RateLimitedError(UpstreamError):
    """The provider (or Areion) throttled the call."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        upstream_status: int | None = 429,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.retry_after = retry_after


class ProviderUnavailableError(UpstreamError):
    """No deployment of the group (or its fallbacks) could take the call."""

    status = 503
    code = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.retry_after = retry_after


class ProviderTimeoutError(UpstreamError):
    """The provider did not connect, start or finish in time."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class StreamInterruptedError(UpstreamError):
    """A stream failed after its first byte reached the client; it cannot be retried."""

    code = "stream_interrupted"
    retryable = False
