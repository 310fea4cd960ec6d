"""One exception family whose messages speak to a person: what was wrong, where, and what to do."""


class StudioError(Exception):
    """Bad input or an impossible request. The CLI prints the message on one line and exits with status 2."""

    def __init__(self, what: str, where: str | None = None, hint: str | None = None):
        self.what, self.where, self.hint = what, where, hint
        parts = [what if where is None else f"{where}: {what}"]
        if hint:
            parts.append(hint)
        super().__init__(" — ".join(parts))


class RecipeError(StudioError):
    """A recipe that does not validate (unknown key, unknown method, bad parameter value)."""


class SourceError(StudioError):
    """A model reference that cannot be resolved or read."""


class UnsafeFileError(SourceError):
    """A pickle whose loading would run code. Nothing of it was executed."""
