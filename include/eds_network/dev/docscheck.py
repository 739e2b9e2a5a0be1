"""The docs check: every command, make target, path and connection id that README.md and docs/*.md name exists.

What is read: inline code spans and fenced code blocks of each Markdown file, and its relative links.
  - `eds …`        the subcommand must exist in the CLI's argparse tree (`eds_network.cli.build_parser`), its
                   first positional must be one of the subcommand's choices (`a|b|c` alternatives each checked),
                   and every `--option` must be one the subcommand accepts; UPPERCASE words are placeholders;
  - `make X`       X must be a target of the Makefile or of a file it includes (`VAR=value` words skipped);
  - paths          a word whose first segment is a top-level entry of the repository (`tests/…`, `plugins/…`)
                   must exist; a bare file name with an extension (`view.py`) must exist somewhere in the
                   repository; runtime paths (`.eds/`, `$EDS_HOME/…`, absolute, URLs) and placeholders
                   (`<base>`, `*`, `{…}`, `…`) are not checked; a relative Markdown link must resolve;
  - connection ids `eds_…` words of the connection id families must be an id the code defines: every zone's
                   connections (`orchestration.zone_connections`) and the central ones; `eds_src_<base>` or
                   `eds_key_*` must match at least one.

Run it as `eds docs-check [ROOT]`: it prints each problem (file:line: what) and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# eds_… words that name a connection (the others are DAG ids, modules, schemas, roles, sites, tags…)
CONNECTION_FAMILIES = (
    "eds_src_",
    "eds_wh_",
    "eds_key_",
    "eds_sign_",
    "eds_s3",
    "eds_hdh_",
    "eds_catalog",
    "eds_airflow",
    "eds_trust",
)
# generated at run time, never in git: named by the docs, not checked
RUNTIME = (".eds", ".eds-test", ".venv", "tests/artifacts", "deploy/secrets", "deploy/certs")
PLACEHOLDER = re.compile(r"[<>*{}$…]|\.\.\.|\[|\]")
# bare file names checked: source and configuration (data files such as *.json are often run-time objects)
FILE_EXT = re.compile(r"^[\w.-]+\.(py|md|ya?ml|toml|txt|in|sh|html|css|cfg|ini|ttl|mako)$")
_FENCE = re.compile(r"^(```|~~~)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


# -- what the repository defines ---------------------------------------------------------------------------------


def cli_tree(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """{subcommand: {"choices": first positional's choices or None, "options": {--opt…}, "remainder": bool}}
    of the `eds` parser (`eds_network.cli.build_parser()`: the caller passes it, dev/ does not import the CLI)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, sp in sub.choices.items():
        positionals = [a for a in sp._actions if not a.option_strings]
        out[name] = {
            "choices": set(positionals[0].choices) if positionals and positionals[0].choices else None,
            "options": {o for a in sp._actions for o in a.option_strings},
            "remainder": any(a.nargs == argparse.REMAINDER for a in positionals),
        }
    return out


def make_targets(root: Path) -> set[str]:
    targets: set[str] = set()
    todo, seen = [root / "Makefile"], set()
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        for line in f.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^([A-Za-z0-9][\w.-]*(?:\s+[A-Za-z0-9][\w.-]*)*)\s*:(?!=)", line)
            if m and not line.startswith("\t"):
                targets.update(m.group(1).split())
            inc = re.match(r"^-?include\s+(.+)$", line)
            if inc:
                todo += [root / p for p in inc.group(1).split()]
    return targets


def connection_ids(network=None) -> set[str]:
    from eds_network.core.config import load_network
    from eds_network.orchestration.zone_connections import CENTRAL_CONNECTION_IDS, all_zones, zone_connection_ids

    network = network or load_network()
    ids = set(CENTRAL_CONNECTION_IDS)
    for z in all_zones(network):
        ids.update(zone_connection_ids(network, z))
    return ids


def repo_files(root: Path) -> tuple[set[str], set[str]]:
    """(top-level entries, basenames of every file) of the checkout, generated state left out."""
    skip = {".git", ".venv", ".eds", ".eds-test", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}

    def kept(name: str) -> bool:  # .eds-test-gw1, ...: the state folders of the test workers (tests/conftest.py)
        return name not in skip and not name.startswith(".eds-test-")

    top = {p.name for p in root.iterdir() if kept(p.name)}
    names: set[str] = set()
    for _folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if kept(d)]
        names.update(files)
    return top, names


# -- what the docs say -------------------------------------------------------------------------------------------


def code_spans(text: str) -> Iterable[tuple[int, str]]:
    """(line number, code) of every inline code span and every line of a fenced block."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            yield n, line.split(" #", 1)[0]
        else:
            for m in _INLINE.finditer(line):
                yield n, m.group(1)


def _words(code: str) -> list[str]:
    try:
        return shlex.split(code, comments=False)
    except ValueError:
        return code.split()


def _commands(code: str, prog: str) -> Iterable[list[str]]:
    """Each `prog …` command in a code span (several per span when chained with ; && | or listed)."""
    for part in re.split(r"\s*(?:;|&&|\|\||\(|\)|\bthen\b|\bor\b)\s*", code):
        words = _words(part)
        for i, w in enumerate(words):
            if w in (prog, "$(EDS)", f".venv/bin/{prog}") and (i == 0 or words[i - 1] in ("sudo", "-", "run")):
                yield words[i + 1 :]
                break


class Checker:
    def __init__(self, root: Path, *, tree: dict[str, dict], targets=None, conns=None):
        self.root = Path(root)
        self.tree = tree
        self.targets = targets if targets is not None else make_targets(self.root)
        self.conns = conns if conns is not None else connection_ids()
        self.top, self.names = repo_files(self.root)
        self.checked: dict[str, set[str]] = {"eds": set(), "make": set(), "path": set(), "connection": set()}

    def docs(self) -> list[Path]:
        return [self.root / "README.md", *sorted((self.root / "docs").glob("*.md"))]

    def check(self, files: Iterable[Path] | None = None) -> list[Problem]:
        problems: list[Problem] = []
        for f in files if files is not None else self.docs():
            text = f.read_text(encoding="utf-8")
            rel = str(f.relative_to(self.root)) if f.is_relative_to(self.root) else str(f)
            for n, code in code_spans(text):
                problems += [Problem(rel, n, w) for w in self.check_code(code)]
            for n, line in enumerate(text.splitlines(), 1):
                for m in _LINK.finditer(line):
                    problems += [Problem(rel, n, w) for w in self.check_link(f, m.group(1))]
        return problems

    # one code span
    def check_code(self, code: str) -> list[str]:
        out = []
        for words in _commands(code, "eds"):
            out += self.check_eds(words)
        for words in _commands(code, "make"):
            out += self.check_make(words)
        for w in code.split():
            w = w.strip("`'\"()[],;:")
            out += self.check_path(w) + self.check_connection(w)
        return out

    def check_eds(self, words: list[str]) -> list[str]:
        if not words or PLACEHOLDER.search(words[0]) or words[0].startswith("-"):
            return []
        cmd = words[0]
        self.checked["eds"].add(" ".join(words[:2]))
        if cmd not in self.tree:
            return [f"`eds {cmd}`: no such eds subcommand (eds has {', '.join(sorted(self.tree))})"]
        spec, out = self.tree[cmd], []
        if spec["remainder"]:
            return out
        rest = [w for w in words[1:] if w not in ("|",)]
        positional = next((w for w in rest if not w.startswith("-")), None)
        if spec["choices"] is not None and positional is not None and not PLACEHOLDER.search(positional):
            for alt in positional.split("|"):
                if alt and not alt.isupper() and alt not in spec["choices"]:
                    out.append(f"`eds {cmd} {alt}`: not an action of eds {cmd} ({', '.join(sorted(spec['choices']))})")
        for w in rest:
            opt = w.split("=", 1)[0].strip("[]")
            if opt.startswith("-") and opt not in spec["options"]:
                out.append(f"`eds {cmd} {opt}`: eds {cmd} has no option {opt}")
        return out

    def check_make(self, words: list[str]) -> list[str]:
        out = []
        for w in words:
            if "=" in w or w.startswith("-") or PLACEHOLDER.search(w):
                continue
            if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", w):
                break
            self.checked["make"].add(w)
            if w not in self.targets:
                out.append(f"`make {w}`: no such make target")
        return out

    def check_path(self, w: str) -> list[str]:
        w = w.rstrip(".,:;")
        if not w or PLACEHOLDER.search(w) or "://" in w or w.startswith(("/", "~", "-", "$")):
            return []
        if any(w == r or w.startswith(r + "/") for r in RUNTIME):
            return []
        first = w.split("/", 1)[0]
        if "/" in w and first in self.top:
            self.checked["path"].add(w)
            target = w.split("::", 1)[0]
            return [] if (self.root / target).exists() else [f"`{w}`: no such path in the repository"]
        if "/" not in w and FILE_EXT.match(w) and not w.startswith("."):
            self.checked["path"].add(w)
            return [] if w in self.names else [f"`{w}`: no file of that name in the repository"]
        return []

    def check_connection(self, w: str) -> list[str]:
        m = re.match(r"eds_[a-z0-9_]*", w.rstrip("."))
        if m is None or not m.group(0).startswith(CONNECTION_FAMILIES):
            return []
        word, rest = m.group(0), w.rstrip(".")[m.end() :]
        if rest and not PLACEHOLDER.match(rest):
            return []  # part of something else (a schema-qualified name, a path)
        self.checked["connection"].add(w)
        if not rest and word in self.conns:
            return []
        if rest:  # a family named with a placeholder (`eds_key_*`, `eds_src_<base>`): some id must match
            return [] if any(c.startswith(word) for c in self.conns) else [f"`{w}`: no connection id matches it"]
        return [f"`{w}`: no such connection id (the code defines {', '.join(sorted(self.conns))})"]

    def check_link(self, doc: Path, target: str) -> list[str]:
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return []
        path = target.split("#", 1)[0]
        if not path:
            return []
        return [] if (doc.parent / path).exists() else [f"link {target}: no such file"]


def run(root: Path, parser: argparse.ArgumentParser) -> int:
    """`eds docs-check`: print each problem and a count of what was checked; 1 if anything is missing."""
    checker = Checker(root, tree=cli_tree(parser))
    problems = checker.check()
    for p in problems:
        print(p)
    counts = ", ".join(f"{len(v)} {k}" for k, v in checker.checked.items())
    print(f"docs check: {len(problems)} problem(s) in README.md and docs/*.md (checked: {counts})")
    return 1 if problems else 0
