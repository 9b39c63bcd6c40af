"""The one error type configuration problems raise, so start-up can print one clear line."""


class ConfigError(ValueError):
    """
    A configuration value is missing or wrong.  ``key`` is the dotted path of the setting
    (``listener.submission.tls_cert``) and ``source`` the file it is in, so the admin knows
    exactly what to fix, and where.
    """

    def __init__(self, key: str, problem: str, source: "str | None" = None) -> None:
        super().__init__(f"{source}: {key}: {problem}" if source else f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source

    def in_file(self, path: str) -> "ConfigError":
        """The same error, naming the file it is in (an admin may have several configurations)."""
        return self if self.source else ConfigError(self.key, self.problem, source=path)


__all__ = ["ConfigError"]
