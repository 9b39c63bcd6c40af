"""The one error type configuration problems raise, so start-up can print one clear line."""


class ConfigError(ValueError):
    """
    A configuration value is missing or wrong.  ``key`` is the dotted path of the setting
    (``listener.submission.tls_cert``), so the admin knows exactly what to fix.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


__all__ = ["ConfigError"]
