"""The two revisions the gate compares: the source tree it is run from (the head, uncommitted
edits included) and a base commit, checked out as a temporary ``git worktree``.

The head is found from the working directory (``git rev-parse --show-toplevel``), not from where
the installed dimbench lives: the gate measures the tree it is run in, whatever is installed.
Every check that can fail on bad input (not a git checkout, an unknown revision, no commit to
compare with) raises ``UsageError`` before anything is measured.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dimbench.errors import UsageError
from dimbench.measure.metadata import MEASURED_PATHS

GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Revision:
    """A side's source: its tree on disk, the commit it is, whether it has uncommitted edits."""

    root: Path
    sha: str
    dirty: bool = False
    rev: str = ""  # how it was asked for: "HEAD~1", "merge-base with origin/main", a name

    @property
    def label(self) -> str:
        return self.sha[:12] + ("+dirty" if self.dirty else "")

    def to_dict(self) -> dict:
        return {
            "sha": self.sha,
            "label": self.label,
            "dirty": self.dirty,
            "rev": self.rev,
            "root": str(self.root),
        }


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except FileNotFoundError:
        raise UsageError("the speed gate needs git, which is not installed") from None


def _out(root: Path, *args: str) -> str | None:
    """The command's stripped stdout, None when it failed."""
    res = git(root, *args)
    return res.stdout.strip() if res.returncode == 0 else None


def source_tree(cwd: Path | None = None) -> Path:
    """The dimbench source tree the working directory lies in."""
    cwd = Path.cwd() if cwd is None else cwd
    top = _out(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        raise UsageError(
            f"{cwd} is not a git checkout: run `dimbench regress` inside a dimbench source tree"
        )
    root = Path(top)
    if not (root / "dimbench" / "__init__.py").is_file():
        raise UsageError(f"{root} is not a dimbench source tree (no dimbench/__init__.py)")
    return root


def _commit(root: Path, rev: str) -> str | None:
    return _out(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def head_revision(root: Path) -> Revision:
    """The working tree as it is: HEAD's commit, dirty if the measured code has edits."""
    sha = _commit(root, "HEAD")
    if sha is None:
        raise UsageError(f"{root} has no commit yet: commit something to compare against")
    status = _out(root, "status", "--porcelain", "--untracked-files=normal", "--", *MEASURED_PATHS)
    return Revision(root, sha, dirty=bool(status), rev="working tree")


def default_base(root: Path) -> tuple[str, str]:
    """(sha, how it was found): the merge base with the upstream branch when there is one and it
    is not HEAD itself, else HEAD~1 (in CI, a fresh clone of main: the last landed commit)."""
    head = _commit(root, "HEAD")
    upstream = _out(root, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}")
    if head is not None and upstream:
        merge_base = _out(root, "merge-base", "HEAD", "@{upstream}")
        if merge_base and merge_base != head:
            return merge_base, f"merge base with {upstream}"
    parent = _commit(root, "HEAD~1")
    if parent is None:
        shallow = _out(root, "rev-parse", "--is-shallow-repository") == "true"
        hint = " (a shallow clone: `git fetch --deepen=1` fetches it)" if shallow else ""
        raise UsageError(
            f"HEAD has no parent commit to compare with{hint}: name a base with --base REV"
        )
    return parent, "HEAD~1"


def resolve_base(root: Path, rev: str | None) -> Revision:
    """The base commit (not checked out yet: ``root`` is the repository's)."""
    if rev is None:
        sha, how = default_base(root)
    else:
        sha = None if not rev or rev.startswith("-") else _commit(root, rev)
        if sha is None:
            raise UsageError(f"--base {rev}: unknown revision in {root}")
        how = rev
    if git(root, "cat-file", "-e", f"{sha}:dimbench/__init__.py").returncode != 0:
        raise UsageError(f"base {how} ({sha[:12]}) has no dimbench package to measure")
    return Revision(root, sha, rev=how)


# Folders that a revision from before the one-package layout kept beside dimbench/ and installed
# as dimbench.<name> (pyproject's package-dir then)
OLD_TOP_LEVEL_PACKAGES = ("suites", "baselines")


def link_old_layout(tree: Path) -> None:
    """Make an old-layout checkout importable from its root like today's: ``dimbench/suites``
    and ``dimbench/baselines`` become links to the top-level folders it installed from."""
    for name in OLD_TOP_LEVEL_PACKAGES:
        folder, link = tree / name, tree / "dimbench" / name
        if (folder / "__init__.py").is_file() and not link.exists():
            link.symlink_to(Path("..") / name, target_is_directory=True)


@contextlib.contextmanager
def checkout(base: Revision, parent: Path) -> Iterator[Revision]:
    """``base`` checked out as a detached worktree under ``parent``; removed on the way out
    (also on an error or Ctrl-C), with ``git worktree prune`` for what a kill left behind."""
    repo = base.root
    path = parent / f"base-{base.sha[:12]}"
    try:
        res = git(repo, "worktree", "add", "--detach", "--quiet", str(path), base.sha)
        if res.returncode != 0:
            raise RuntimeError(f"git worktree add {base.sha[:12]} failed: {res.stderr.strip()}")
        link_old_layout(path)
        yield Revision(path, base.sha, dirty=False, rev=base.rev)
    finally:
        with contextlib.suppress(UsageError, subprocess.SubprocessError):
            git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(UsageError, subprocess.SubprocessError):
            git(repo, "worktree", "prune")
