"""Errors and the HTTP client shared by the Prometheus helpers."""

from __future__ import annotations


class PrometheusNotInstalled(RuntimeError):
    """The ``prometheus`` binary was not found (the message says how to install it)."""


class PrometheusStartError(RuntimeError):
    """A local Prometheus did not become ready (the message holds its log tail)."""


class PrometheusQueryError(RuntimeError):
    """Prometheus was down, too slow, or answered an error.

    Attributes: ``url``, ``query_name``, ``promql``, ``cause`` (the underlying exception).
    """

    def __init__(self, url: str, query_name: str, promql: str, cause: BaseException, detail: str = "") -> None:
        self.url, self.query_name, self.promql, self.cause = url, query_name, promql, cause
        where = f" ({detail})" if detail else ""
        super().__init__(
            f"Prometheus at {url} failed query {query_name!r}{where}: {type(cause).__name__}: {cause}\n"
            f"  PromQL: {promql}"
        )


class EmptyQueryWarning(UserWarning):
    """A query returned no series for a phase."""


def connect(url: str, timeout_s: float = 30.0, retries: int = 1):
    """A ``PrometheusConnect`` for ``url`` that ignores proxy settings from the environment,
    retries ``retries`` times on connection errors / 5xx with a short backoff, and times out."""
    import requests
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.trust_env = False  # never route our loopback/cluster queries through an env proxy
    retry = Retry(
        total=retries,
        connect=retries,
        read=0,
        backoff_factor=0.2,
        status_forcelist=(502, 503, 504),
        allowed_methods=("GET", "POST"),
        raise_on_status=False,
    )
    return PrometheusConnect(url=url.rstrip("/"), session=session, retry=retry, timeout=timeout_s)
