"""The docs check (`eds_network.dev.docscheck`): every `eds …` command, `make` target, repository path and
connection id that README.md and docs/*.md name exists — and the check does fail when one is renamed."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from eds_network.cli import build_parser, main
from eds_network.core.config import REPO_ROOT
from eds_network.dev import docscheck

TREE = docscheck.cli_tree(build_parser())


@pytest.fixture(scope="module")
def checker() -> docscheck.Checker:
    return docscheck.Checker(REPO_ROOT, tree=TREE)


def test_everything_the_docs_name_exists(checker):
    problems = checker.check()
    assert problems == [], "\n".join(map(str, problems))
    assert main(["docs-check"]) == 0
    # it did look: the commands, targets, paths and connection ids of the docs were all checked
    got = {k: len(v) for k, v in checker.checked.items()}
    assert got["eds"] >= 15 and got["make"] >= 12 and got["path"] >= 40 and got["connection"] >= 10, got
    assert {"keys rotate", "milestone set", "milestone list"} <= checker.checked["eds"]
    assert {"demo", "test-fast", "stop"} <= checker.checked["make"]
    assert {"eds_catalogue", "eds_airflow_api", "eds_src_<base>"} <= checker.checked["connection"]


def _copy_with(tmp_path: Path, replace: dict[str, tuple[str, str]]) -> Path:
    """A copy of the checkout (top-level entries symlinked) where the files of `replace` are edited."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO_ROOT.iterdir():
        if (
            entry.name in (".git", ".venv", ".eds", ".eds-test")
            or entry.name.startswith(".eds-test-")
            or entry.name in {p.split("/")[0] for p in replace}
        ):
            continue
        os.symlink(entry, root / entry.name)
    for rel in replace:
        top = rel.split("/")[0]
        if top != rel and not (root / top).exists():
            shutil.copytree(REPO_ROOT / top, root / top, symlinks=True)
    for rel, (old, new) in replace.items():
        src = REPO_ROOT / rel
        if not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text(encoding="utf-8")
        assert old in text, (rel, old)
        (root / rel).write_text(text.replace(old, new), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # a README command renamed: no such subcommand, no such action, no such option
        ({"README.md": ("`eds leak-scan`", "`eds leakscan`")}, r"README\.md:\d+: `eds leakscan`: no such eds subcommand"),
        ({"README.md": ("`eds keys rotate --platform idf`", "`eds keys turn --platform idf`")},
         r"`eds keys turn`: not an action of eds keys"),
        ({"README.md": ("`eds keys rotate --platform idf`", "`eds keys rotate --platfrom idf`")},
         r"`eds keys --platfrom`: eds keys has no option --platfrom"),
        # a make target renamed in the README, or in the Makefile under an unchanged README
        ({"README.md": ("make demo ", "make demos ")}, r"`make demos`: no such make target"),
        ({"Makefile": ("\ntest-fast: install", "\ntest-quick: install")}, r"`make test-fast`: no such make target"),
        # a path and a connection id renamed
        ({"README.md": ("`plugins/eds_network_ui.py`", "`plugins/eds_ui.py`")},
         r"`plugins/eds_ui\.py`: no such path in the repository"),
        ({"README.md": ("`eds_airflow_api`", "`eds_airflow_rest`")}, r"`eds_airflow_rest`: no such connection id"),
        ({"README.md": ("(docs/security.md)", "(docs/threats.md)")}, r"link docs/threats\.md: no such file"),
    ],
)  # fmt: skip
def test_the_check_fails_when_something_the_docs_name_is_renamed(tmp_path, edit, expected):
    root = _copy_with(tmp_path, edit)
    problems = [str(p) for p in docscheck.Checker(root, tree=TREE).check()]
    assert len(problems) >= 1 and all(re.search(expected, p) for p in problems), problems
    assert main(["docs-check", str(root)]) == 1
