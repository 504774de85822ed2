"""The docs stay honest: links resolve, named make targets and scripts exist, runnable
blocks run, and docs/configuration.md matches the settings classes.

The convention (docs/development.md, "The docs are tested"): a fenced block marked `sh`
runs here — no Docker, no cluster, no network — and is run by this test from the
repository root; a block marked `bash` needs the stack or a cluster and is only checked
(make targets, script paths); a block marked `text` is quoted output.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic_core import PydanticUndefined

from model_api.config import ApiSettings
from model_loader.config import LoaderSettings

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200
LINE_MAX_CHARS = 100
# Results files are written by the benchmarks, with their tables as wide as they come.
GENERATED = "results"
SHELL_LANGS = ("sh", "bash")
COMMAND_WORDS = ("make", "uv", "python", "python3", "bash", "docker", "kubectl")


def markdown_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted({ROOT / n for n in names if (ROOT / n).is_file()})


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Doc:
    path: Path
    prose: list[tuple[int, str]]  # lines outside fenced blocks
    blocks: list[Block]

    @property
    def headings(self) -> list[str]:
        return [m[1] for _, line in self.prose if (m := re.match(r"#{1,6} +(.+?) *#*$", line))]


FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


def parse(path: Path) -> Doc:
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    fence = lang = ""
    body: list[str] = []
    start = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if fence:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                blocks.append(Block(path, start, lang, "\n".join(body) + "\n"))
                fence = ""
            else:
                body.append(line)
        elif m := FENCE.match(line.strip()):
            fence, lang, body, start = m[1], m[2], [], number
        else:
            prose.append((number, line))
    assert not fence, f"{path}:{start}: unclosed code block"
    return Doc(path, prose, blocks)


DOCS = {path: parse(path) for path in markdown_files()}


def strip_code_spans(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", "", line)


def code_spans(line: str) -> list[str]:
    return [m[2] for m in re.finditer(r"(`+)(.+?)\1", line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lower case,
    punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Doc) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in doc.headings:
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")


def links(doc: Doc) -> list[tuple[int, str]]:
    out = []
    for number, line in doc.prose:
        out += [(number, m[1]) for m in LINK.finditer(strip_code_spans(line))]
        if m := REFERENCE.match(line):
            out.append((number, m[1]))
    return out


def test_there_are_docs_to_check() -> None:
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    assert {"README.md", "docs/configuration.md", "docs/development.md"} <= names


@pytest.mark.parametrize("path", sorted(DOCS), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for number, target in links(DOCS[path]):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md":
            target_doc = DOCS.get(resolved) or parse(resolved)
            if anchor not in anchors(target_doc):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def shell_lines(doc: Doc) -> list[tuple[str, str]]:
    """(where, command line) for every line of sh/bash blocks and every inline code span
    that starts with a command word; comments dropped, continuations joined."""
    out = []
    for block in doc.blocks:
        if block.lang in SHELL_LANGS:
            for line in block.text.replace("\\\n", " ").splitlines():
                out.append((block.id, line))
    for number, line in doc.prose:
        for span in code_spans(line):
            if span.split(" ", 1)[0] in COMMAND_WORDS or re.match(r"^[A-Z_]+=\S* ", span):
                out.append((f"{doc.path.relative_to(ROOT)}:{number}", span))
    return out


def tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split("#", 1)[0].split()


OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def make_targets(line: str) -> list[str]:
    targets = []
    words = tokens(line)
    for i, word in enumerate(words):
        if word != "make" or (i and words[i - 1] not in OPERATORS and "=" not in words[i - 1]):
            continue
        for arg in words[i + 1 :]:
            if arg in OPERATORS or arg.startswith((">", "<", "2>")):
                break
            if re.fullmatch(r"[a-z0-9][a-z0-9-]*", arg):
                targets.append(arg)
    return targets


def named_make_targets() -> dict[str, str]:
    named: dict[str, str] = {}
    for doc in DOCS.values():
        for where, line in shell_lines(doc):
            for target in make_targets(line):
                named.setdefault(target, where)
    return named


NAMED_TARGETS = named_make_targets()


def test_docs_name_make_targets() -> None:
    assert {"up", "test", "rollout", "publish"} <= set(NAMED_TARGETS)


@pytest.mark.parametrize("target", sorted(NAMED_TARGETS))
def test_named_make_target_exists(target: str) -> None:
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{NAMED_TARGETS[target]}: make {target}: {result.stderr}"


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def test_scripts_and_modules_named_in_commands_exist() -> None:
    """`python path/to/script.py` names a file; `python -m package.module` a module of the
    development environment (the workspace members are installed in it)."""
    missing = []
    for doc in DOCS.values():
        for where, line in shell_lines(doc):
            words = tokens(line)
            for i, word in enumerate(words):
                word = word.split("=", 1)[-1]
                if re.fullmatch(r"[\w.-]+(/[\w.-]+)+\.(py|sh)", word):
                    base = ROOT if (ROOT / word.split("/")[0]).exists() else doc.path.parent
                    if not (base / word).is_file():
                        missing.append(f"{where}: {word}")
                after_python = i and words[i - 1].startswith("python") and i + 1 < len(words)
                if word == "-m" and after_python and not importable(words[i + 1]):
                    missing.append(f"{where}: python -m {words[i + 1]}")
    assert not missing, "\n".join(missing)


RUNNABLE = [block for doc in DOCS.values() for block in doc.blocks if block.lang == "sh"]


def test_docs_have_runnable_blocks() -> None:
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_runnable_block_runs(block: Block) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{block.id}:\n{block.text}\n{result.stdout}{result.stderr}"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES


def test_lines_are_wrapped() -> None:
    wide = []
    for path, doc in DOCS.items():
        if path.parent.name == GENERATED:
            continue
        rows = list(doc.prose)
        rows += [
            (b.line + i + 1, line)
            for b in doc.blocks
            if b.lang != "text"
            for i, line in enumerate(b.text.splitlines())
        ]
        wide += [f"{path.relative_to(ROOT)}:{n}" for n, line in rows if len(line) > LINE_MAX_CHARS]
    assert not wide, "\n".join(wide)


# --- docs/configuration.md against the settings classes ----------------------------

CONFIGURATION = ROOT / "docs" / "configuration.md"


def tables(doc: Doc) -> dict[str, dict[str, list[str]]]:
    """{section heading: {variable: [the row's other cells]}} for tables whose first
    column is a variable name in backticks."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for _, line in doc.prose:
        if m := re.match(r"#{2,3} +(.+)", line):
            section = m[1]
        elif m := re.match(r"^\| `([A-Z][A-Z0-9_]*)` \|(.*)\|\s*$", line):
            out.setdefault(section, {})[m[1]] = [c.strip() for c in m[2].split("|")]
    return out


CONFIG_TABLES = tables(parse(CONFIGURATION))


def section(name: str) -> dict[str, list[str]]:
    matches = [rows for heading, rows in CONFIG_TABLES.items() if name in heading]
    assert len(matches) == 1, f"one table under a heading naming {name}"
    return matches[0]


def documented_default(cell: str) -> str:
    spans = code_spans(cell)
    return spans[0] if spans else cell


def expected_default(value: object) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return None if value is None else str(value)


@pytest.mark.parametrize("settings", [ApiSettings, LoaderSettings], ids=lambda c: c.__name__)
def test_configuration_documents_every_setting(settings: type) -> None:
    rows = section(settings.__name__)
    aliases = {field.validation_alias: field for field in settings.model_fields.values()}
    assert set(rows) == set(aliases), "documented names != the class's env names"
    for alias, field in aliases.items():
        documented = documented_default(rows[alias][0])
        if field.default is PydanticUndefined:
            assert documented == "required", alias
            continue
        expected = expected_default(field.default)
        if expected is not None:
            assert documented == expected, alias
        elif documented == "auto":
            # "auto" must really be the default: the class reads it as None.
            values = {"MODEL_URI": "file:///m/v1/", alias: "auto"}
            assert getattr(settings.model_validate(values), field_name(settings, alias)) is None
        else:
            assert documented == "unset", alias


def field_name(settings: type, alias: str) -> str:
    return next(n for n, f in settings.model_fields.items() if f.validation_alias == alias)


def test_library_variables_are_not_settings() -> None:
    read_by_classes = {
        f.validation_alias
        for settings in (ApiSettings, LoaderSettings)
        for f in settings.model_fields.values()
    }
    library = section("libraries")
    assert library and not set(library) & read_by_classes


def compose_variables() -> dict[str, set[str]]:
    """{variable: the defaults compose files give it (${VAR:-default})}."""
    found: dict[str, set[str]] = {}
    for path in ROOT.glob("compose*.yaml"):
        for m in re.finditer(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-+?])([^}$]*))?", path.read_text()):
            defaults = found.setdefault(m[1], set())
            if m[2] == "-":
                defaults.add(m[3])
    return found


def test_every_compose_variable_is_documented() -> None:
    documented = {name for rows in CONFIG_TABLES.values() for name in rows}
    assert set(compose_variables()) - documented == set()


def test_compose_knobs_exist_and_defaults_match() -> None:
    variables = compose_variables()
    makefile = (ROOT / "Makefile").read_text()
    for name, cells in section("Compose knobs").items():
        documented = documented_default(cells[0])
        if name in variables:
            defaults = variables[name] - {"", "/dev/null"}
            if len(defaults) == 1:
                assert documented == defaults.pop(), name
            else:
                assert documented == "unset" or not defaults, name
        else:
            m = re.search(rf"^{name} \?= *(.*)$", makefile, flags=re.MULTILINE)
            assert m, f"{name} is read by no compose file and set in no Makefile"
            assert documented == m[1].strip(), name


@pytest.mark.parametrize(
    ("service", "settings"), [("api", ApiSettings), ("loader", LoaderSettings)], ids=str
)
def test_compose_spells_out_the_documented_defaults(service: str, settings: type) -> None:
    """docs/configuration.md says compose.yaml sets the classes' defaults, MODEL_URI aside."""
    environment = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service][
        "environment"
    ]
    differ = []
    for name, value in environment.items():
        field = next(
            (f for f in settings.model_fields.values() if f.validation_alias == name), None
        )
        if field is None or field.default is PydanticUndefined:
            continue
        m = re.fullmatch(r"\$\{[A-Z0-9_]+(?::?([-+])(.*))?\}", str(value))
        value = (m[2] if m[1] == "-" else "") if m else str(value).lower()
        expected = expected_default(field.default)
        if value != expected and not (expected is None and value in ("", "auto")):
            differ.append(f"{name}: compose {value!r}, default {expected!r}")
    assert not differ, "\n".join(differ)
