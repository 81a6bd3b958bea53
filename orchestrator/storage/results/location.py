"""Where the results store is: `open_results` opens one from a URL, `results_for` from the
settings (None: full results stay in Redis)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, cast

from obstore.store import from_url

from orchestrator.settings import Settings
from orchestrator.storage.results.store import ResultStore

# The AWS_* variables passed on to an s3:// results store (obstore's S3 configuration keys).
S3_OPTIONS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        "AWS_SKIP_SIGNATURE",
        "AWS_REQUEST_PAYER",
        "AWS_UNSIGNED_PAYLOAD",
        "AWS_CHECKSUM_ALGORITHM",
        "AWS_SERVER_SIDE_ENCRYPTION",
        "AWS_SSE_KMS_KEY_ID",
        "AWS_IMDSV1_FALLBACK",
        "AWS_METADATA_ENDPOINT",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    }
)


def _s3_store(url: str, config: dict[str, str], timeout_s: float) -> Any:
    endpoint = config.get("AWS_ENDPOINT_URL") or config.get("AWS_ENDPOINT") or ""
    client_options: dict[str, Any] = {"timeout": f"{max(1, int(timeout_s))}s", "connect_timeout": "5s"}
    if endpoint.startswith("http://"):
        client_options["allow_http"] = True
    # Path-style requests: what S3-compatible servers (MinIO, SeaweedFS, ...) answer to.
    config.setdefault("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false")
    # obstore retries a failed request itself too; a short budget lets the worker's own
    # retry loop (which keeps the lease and logs) decide.
    retry: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=timeout_s)}
    s3_config: Any = config
    return from_url(url, config=s3_config, client_options=cast(Any, client_options), retry_config=retry)


def open_results(url: str, options: dict[str, str] | None = None, *, timeout_s: float = 60.0) -> ResultStore:
    """The store at `url`: `file:///abs/dir` (created if missing), `s3://bucket/prefix` (AWS_*
    variables give credentials, region and a custom endpoint such as AWS_ENDPOINT_URL; an
    `http://` endpoint is allowed), or `memory:///`. `options` are obstore config keys, which
    take precedence over the environment; `timeout_s` (seconds) bounds one S3 request and its
    retries. Raises ValueError for other schemes, OSError if a directory cannot be created."""
    scheme = url.partition("://")[0]
    config = dict(options or {})
    if scheme == "file":
        os.makedirs(url[len("file://") :] or "/", exist_ok=True)
        store = from_url(url)
    elif scheme in ("s3", "s3a"):
        store = _s3_store(url, config, timeout_s)
    elif scheme == "memory":
        store = from_url(url)
    else:
        raise ValueError(f"BACKSTREAM_RESULTS_URL {url!r}: use file:///dir, s3://bucket/prefix or memory:///")
    return ResultStore(store, url)


def results_for(settings: Settings) -> ResultStore | None:
    """The results store the settings name (see `Settings.results_location`), or None: full
    results then stay in Redis. Raises ValueError for a URL of another scheme."""
    url = settings.results_location()
    if url is None:
        return None
    # Only the keys obstore's S3 store knows (others, such as AWS_CA_BUNDLE, it refuses).
    options = {k: v for k, v in settings.results_options.items() if k in S3_OPTIONS}
    options.setdefault("AWS_REGION", options.get("AWS_DEFAULT_REGION", "us-east-1"))
    return open_results(url, options, timeout_s=settings.results_timeout_s)
