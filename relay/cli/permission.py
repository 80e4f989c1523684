"""One line instead of a traceback when the user running a command may not read or change the
relay's files (the unit's state directory is 0750, owned by the relay's user)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


def _name(lookup: str, number: int) -> str:
    try:
        if lookup == "user":
            return pwd.getpwuid(number).pw_name
        return grp.getgrgid(number).gr_name
    except KeyError:
        return str(number)


def blocking_path(path: Path) -> Path:
    """The first directory on the way to `path` this user cannot enter, else `path` itself."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        if not os.path.exists(parent):
            break
        if not os.access(parent, os.X_OK):
            return parent
    return path


def permission_line(exc: PermissionError, command: str) -> str:
    """What was refused, who owns it, and whom to run the command as."""
    if not exc.filename:
        return f"permission denied: {exc.strerror or exc}; run it as the relay's user or root"
    where = blocking_path(Path(os.fsdecode(exc.filename)))
    try:
        st = where.stat()
    except OSError:
        return f"permission denied: {where}; run it as the relay's user or root"
    user = _name("user", st.st_uid)
    group = _name("group", st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    me = _name("user", os.geteuid())
    who = user if user == "root" else f"{user} or root"
    readers = f" (members of group {group} may read it)" if mode & 0o040 else ""
    return (
        f"permission denied: {where} (owner {user}:{group}, mode {mode:04o}) is not open to "
        f"user {me}; run it as {who}{readers}: sudo -u {user} stsguard {command}"
    )
