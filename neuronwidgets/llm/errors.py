"""Errors of the LLM client, importable without the `openai` package being loaded."""


class LLMRequestError(RuntimeError):
    """A chat request failed for good (after retries, or with an error that retrying cannot fix)."""
