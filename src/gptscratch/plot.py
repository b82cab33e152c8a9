"""Placeholder until this subcommand lands."""


def register(sub) -> None:
    pass
