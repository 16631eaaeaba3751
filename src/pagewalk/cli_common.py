"""What every ``pagewalk`` command shares: exit statuses, the one-red-line error report,
scenario resolution and consoles.

The command modules (``*/command.py``) import this module, never :mod:`pagewalk.cli`,
which only assembles the command group: a command module sits below the group that
loads it.

Every PagewalkError becomes one red line on standard error and a non-zero exit status
(2: bad input, 1: the run failed as the kernel would fail it); never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pagewalk.errors import ConfigError, OutputError, PagewalkError, ScenarioError, TraceError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def escape(text: str) -> str:
    """``text`` shown literally inside Rich markup (a ``[`` opens no tag)."""
    return text.replace("[", "\\[")


def console(stderr: bool = False, width: int | None = None) -> Console:
    """A Rich console without highlighting (numbers and paths print as they are)."""
    from rich.console import Console  # Rich takes a tenth of a second to import: on demand
    return Console(stderr=stderr, highlight=False, width=width)


def fail(message: str, status: int) -> NoReturn:
    """One red ``error:`` line on standard error (``message`` is Rich markup), then exit."""
    console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(status)


def note(text: str) -> None:
    """One yellow ``note:`` line on standard error (``text`` is shown literally)."""
    console(stderr=True).print(f"[yellow]note:[/] {escape(text)}", soft_wrap=True)


def output_file(path: str | Path) -> Path:
    """An output file's path with its missing parent directories made (``plot -o
    out/a.png`` as ``sweep -o``), checked writable before any work is done (appending
    nothing; a file that was not there is not left behind). OutputError naming the path
    and the reason otherwise."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as err:
        raise OutputError.writing(path, err) from None
    return path


def output_dir(path: str | Path) -> Path:
    """An output directory (``view --static DIR``), made with its parents if missing;
    OutputError naming the path and the reason if it cannot be made or written into."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError.writing(path, err) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: Permission denied")
    return path


def reports_errors(func: F) -> F:
    """Map pagewalk's error tree to one line and an exit status."""
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ScenarioError, TraceError, ConfigError) as err:
            fail(escape(str(err)), EXIT_BAD_INPUT)
        except PagewalkError as err:
            fail(escape(str(err)), EXIT_RUN_FAILED)
        except (KeyboardInterrupt, BrokenPipeError):
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:  # an internal bug: still one line, unless debugging
            extra = missing_extra(err) if isinstance(err, ImportError) else None
            if extra is not None:         # a package of an extra not installed: bad input
                fail(escape(extra), EXIT_BAD_INPUT)
            if os.environ.get("PAGEWALK_DEBUG"):
                raise
            fail(escape(f"internal error: {type(err).__name__}: {err} "
                        "(set PAGEWALK_DEBUG=1 for a traceback)"), EXIT_INTERNAL)
    return wrapper  # type: ignore[return-value]


def missing_extra(err: ImportError) -> str | None:
    """What to install when ``err`` is a module of one of pagewalk's extras missing (the
    running command named), or None when the module belongs to no extra."""
    from pagewalk.extras import EXTRA_OF_MODULE
    module = (err.name or "").partition(".")[0]
    if module not in EXTRA_OF_MODULE:
        return None
    context = click.get_current_context(silent=True)
    parent = None if context is None else context.parent
    command = "pagewalk" if context is None or parent is None else f"pagewalk {context.info_name}"
    extra = EXTRA_OF_MODULE[module]
    return (f"`{command}` needs {module}, which is not installed: pip install '.[{extra}]' "
            f"in pagewalk's source directory (its `{extra}` extra)")


def require_extra(extra: str) -> None:
    """Refuse to start (ConfigError: one line, exit status 2) when a package of one of
    pagewalk's extras (pyproject.toml) is not installed."""
    import importlib.util

    from pagewalk.extras import EXTRA_OF_MODULE
    for module, its_extra in EXTRA_OF_MODULE.items():
        if its_extra == extra and importlib.util.find_spec(module) is None:
            found = missing_extra(ImportError(name=module))
            raise ConfigError(found or f"{module} is not installed")


class OneLineUsageErrors(click.Command):
    """Usage errors (unknown option, bad choice) as one red line and exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            fail(escape(f"{err.format_message()} (see `pagewalk {self.name} --help`)"),
                 EXIT_BAD_INPUT)


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario file, or the name of a built-in example (a file of that name wins; a
    directory of that name does not hide the example)."""
    from pagewalk.scenario.examples import example_path
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = example_path(name_or_path) if path.name == name_or_path else None
    if found is None and path.exists():
        return path        # not a file: load_scenario says what it is
    if found is None:
        raise ScenarioError(f"no such file or built-in example: {name_or_path!r} "
                            "(see `pagewalk examples`)")
    return found
