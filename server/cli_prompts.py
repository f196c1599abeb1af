"""What the CLI asks the person at the terminal: a passphrase (a new one, or the one that
unlocks a key, asked again when mistyped) and a yes/no confirmation. Never from a pipe:
without a terminal each refuses, naming what to set or pass instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunestep.tools.core.errors import TunestepError


def _passphrase(confirm: bool = False, new: bool = False) -> bytes:
    import getpass

    from tunestep.tools.drafts.operator import MIN_PASSPHRASE, passphrase_from_env

    env = passphrase_from_env()
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise TunestepError("passphrase_missing", "no terminal to ask for the passphrase: set "
                            "TUNESTEP_OPERATOR_PASSPHRASE for automation")
    prompt = (f"new passphrase for the operator key (at least {MIN_PASSPHRASE} characters): "
              if new else "operator key passphrase: ")
    first = getpass.getpass(prompt).encode()
    if new:
        from tunestep.tools.drafts.operator import check_new_passphrase

        check_new_passphrase(first)  # before asking again: say it at once
    if confirm and getpass.getpass("again: ").encode() != first:
        raise TunestepError("passphrase_mismatch", "the two passphrases differ")
    return first


PASSPHRASE_TRIES = 3


def _key_passphrase(key_path: Path) -> bytes:
    """The passphrase that unlocks ``key_path``: a mistyped one is asked again (up to
    three tries at a terminal; one from TUNESTEP_OPERATOR_PASSPHRASE is tried once)."""
    from tunestep.tools.drafts.operator import passphrase_from_env
    from tunestep.tools.signing.operator_keys import load_private_key

    for attempt in range(1, PASSPHRASE_TRIES + 1):
        passphrase = _passphrase()
        try:
            load_private_key(key_path, passphrase)
            return passphrase
        except TunestepError as exc:
            if (exc.code != "operator_key_locked" or passphrase_from_env() is not None
                    or attempt == PASSPHRASE_TRIES):
                raise
        print(f"wrong passphrase for {key_path.name}; try again "
              f"({PASSPHRASE_TRIES - attempt} left)", file=sys.stderr)
    raise AssertionError("unreachable")


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise TunestepError("confirmation_missing", "no terminal to confirm on: review the "
                            "request and pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
