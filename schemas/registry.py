"""Writer schemas from a Confluent-compatible schema registry (`GET /schemas/ids/{id}`,
`GET /schemas/guids/{guid}`), through confluent-kafka's client, which caches them.

A missing schema is `UnknownSchema` (its messages go to the DLQ); an unreachable or failing
registry is retried with backoff until it answers, like Postgres and Kafka outages: waiting never
loses a message, skipping would.
"""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from operators.avro import SchemaFetcher, UnknownSchema
from operators.retry import retrying

_NOT_FOUND = 404


def _transient(exc: BaseException) -> bool:
    """Connection failures, timeouts and 5xx answers: the registry may come back."""
    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code >= 500 or exc.http_status_code < 0
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore"))


def describe_failure(exc: BaseException) -> str:
    """One line for a registry that refused or is not a registry at all."""
    if isinstance(exc, SchemaRegistryError):
        hint = (" (is this the Confluent-compatible base URL, e.g. "
                "http://host:8081 or .../apis/ccompat/v7?)" if exc.http_status_code == 404 else "")
        detail = "" if "Unknown Schema Registry Error" in exc.error_message \
            else f": {exc.error_message}"
        return f"the registry answered HTTP {exc.http_status_code}{detail}{hint}"
    return f"{type(exc).__name__}: {exc}"


def _client(url: str) -> SchemaRegistryClient:
    """Without the client's own retries (3, with up to 7 s of silent backoff): `retrying` logs
    every failed attempt, so an outage shows in the log at once."""
    return SchemaRegistryClient({"url": url, "max.retries": 0})


def registry_subjects(url: str, retry_max_s: float) -> list[str]:
    """The registry's subjects: proves it answers (retried while it is unreachable)."""
    client = _client(url)
    return retrying(f"schema registry {url}: list subjects", client.get_subjects,
                    cap_s=retry_max_s, transient=_transient)


def registry_fetcher(url: str, retry_max_s: float) -> SchemaFetcher:
    client = _client(url)

    def fetch(ident: int | str) -> str:
        def get() -> str:
            found = (client.get_schema(ident) if isinstance(ident, int)
                     else client.get_schema_by_guid(ident))
            return found.schema_str

        try:
            return retrying(f"schema registry {url}: get schema {ident}", get,
                            cap_s=retry_max_s, transient=_transient)
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                raise UnknownSchema(f"the registry has no such schema ({exc.error_message})") \
                    from None
            raise

    return fetch
