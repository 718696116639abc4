"""The ``stratacache`` command: ``demo`` (the main job) and ``simulate``.

Subcommands are imported lazily so that ``stratacache --help`` does not pay for numpy or
SQLAlchemy.
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    import click
except ImportError as exc:  # pragma: no cover - only without the [cli] extra
    raise SystemExit(
        "the stratacache command needs the CLI extra: pip install 'stratacache[cli]'"
    ) from exc


class _LazyGroup(click.Group):
    """A group whose subcommands live in their own modules, imported on first use."""

    _commands: ClassVar[dict[str, tuple[str, str]]] = {
        "demo": ("stratacache.cli.demo", "demo_command"),
        "simulate": ("stratacache.cli.simulate", "simulate_command"),
        "warm": ("stratacache.cli.warm", "warm_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self._commands.get(name)
        if target is None:
            return None
        import importlib

        module_name, attribute = target
        command: Any = getattr(importlib.import_module(module_name), attribute)
        return command  # type: ignore[no-any-return]


@click.group(cls=_LazyGroup)
@click.version_option(package_name="stratacache")
def main() -> None:
    """stratacache: a multi-level cache for Python services."""
