"""Every fix an error message suggests must be runnable as written (issue 23, item 6).

:func:`unrunnable_fixes` parses the flags (``--name``) and options (``key=value``) out of an
error message and checks that the command the user ran accepts each of them: a flag must be an
option of that command's parser (the verb's sub-parser), a ``key`` a field of the config the
command builds (dotted for sections), or ``skip_corrupt`` where the verb reads images. What the
message merely echoes from the command line is left aside, and so are placeholders
(``key=value``, ``NAME=VALUE``). Used by ``tests/test_message_fixes.py`` and by every case of
``tests/test_hostile_inputs.py``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

FLAG = re.compile(r"(?<![\w/.-])(--[a-z][a-z0-9-]*)")
# key=value where key is lower-case (dotted for sections); not inside a path or a quoted value
KEY = re.compile(r"(?<![\w./:=-])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)=(?!=)")
PLACEHOLDERS = {"key"}
# a Python call shown as a recipe (torchvision.datasets.CIFAR10(ROOT, download=True)): its
# keyword arguments are Python, not options of the command
CALL = re.compile(r"[A-Za-z_][\w.]*\([^()]*\)")
#: what parse_args accepts on a verb that reads images, besides its config's options
IMAGE_KEYS = {"skip_corrupt"}


def suggestions(message: str) -> tuple[list[str], list[str]]:
    """``(flags, keys)`` a message names, in order, without repeats."""
    flags = list(dict.fromkeys(FLAG.findall(message)))
    text = CALL.sub("", message)
    keys = [k for k in dict.fromkeys(KEY.findall(text)) if k not in PLACEHOLDERS]
    return flags, keys


def _sub(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(verb)
    return None


def _first_bare(tokens: Sequence[str]) -> str | None:
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = "=" not in token and token not in ("--quiet", "--resume", "--skip-corrupt")
        elif "=" not in token:
            return token
    return None


def _options(cls: type | None) -> set[str]:
    if cls is None:
        return set()
    from bmssl.config_help import iter_options

    return {name for name, _, _ in iter_options(cls)}


def command_of(argv: Sequence[str]) -> tuple[argparse.ArgumentParser | None, set[str], str]:
    """``(the verb's parser, the option keys it takes, a label)`` of a launcher-style argv
    (``["-m", "bmssl", "train", ...]``); ``(None, set(), label)`` for a command not checked."""
    argv = list(argv)
    module = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else None
    words = argv[2:] if module else argv[1:]
    verb = words[0] if words else ""
    method = _first_bare(words[1:])
    label = f"{module or argv[0]} {verb}"
    if module == "bmssl":
        from bmssl.__main__ import DEFAULT_METHOD, _parser
        from bmssl.evaluate import EvalConfig
        from bmssl.methods import get_method

        name = method if verb in ("train", "print-config") and method else DEFAULT_METHOD
        try:
            cls = get_method(name).config_class()
        except Exception:  # an unknown method: its options are none
            cls = None
        keys = {"train": _options(cls), "print-config": _options(cls)}.get(verb, set())
        if verb == "eval":
            keys = _options(EvalConfig)
        return _sub(_parser(name if cls is not None else None), verb), keys, label
    if module == "bissl":
        from bissl.__main__ import build_parser
        from bmssl.methods import get_method

        keys = _options(get_method("bissl").config_class())
        return _sub(build_parser(), verb), keys, label
    if module == "tuning":
        from bmssl.methods import get_method
        from tuning.__main__ import build_parser

        try:
            cls = get_method(method).config_class() if method else None
        except Exception:
            cls = None
        parser = build_parser(method if cls is not None else None)
        return _sub(parser, verb), _options(cls), label
    return None, set(), label


def unrunnable_fixes(argv: Sequence[str], message: str) -> list[str]:
    """The flags and options ``message`` suggests that the command of ``argv`` does not take
    (``[]``: every fix is runnable, or the command is not one this checks)."""
    parser, keys, label = command_of(argv)
    if parser is None:
        return []
    typed = {token.split("=", 1)[0].replace("-", "_") for token in argv if "=" in token}
    flags, named = suggestions(message)
    accepted = set(parser._option_string_actions)
    if "--skip-corrupt" in accepted:
        keys = keys | IMAGE_KEYS
    problems = [f"{label} has no {flag}" for flag in flags if flag not in accepted]
    for key in named:
        if key in keys or key in typed:  # an option it takes, or an echo of what was typed
            continue
        problems.append(f"{label} takes no option {key}=")
    return problems
