"""Every measured figure in README.md and docs/*.md is in some command's stored output.

A figure is a decimal (0.911, 2.26x, 1.5e-8), a percentage or a fraction (14/64) in the prose
(code blocks, inline code and link targets are not prose). It is backed when a stored output,
``benchmarks/results/*.txt`` (each starting with the command that printed it and the commit
it ran at), holds the same number, rounded to the figure's decimals. Otherwise it must be:

- in a paragraph that says it is *unverified* (a figure measured by hand whose output was not
  stored: the reader is told), or
- in ``EXEMPT`` below with its reason (a setting, not a measurement).

A figure with none of these fails the test, naming the file, the line and the figure.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"

_FIGURE = re.compile(
    r"(?<![\w.=/-])(\d+(?:\.\d+)?e-\d+|\d+\.\d+x?|\d+(?:\.\d+)?%|\d+x(?!\w)|\d+/\d+)(?![\w.]*\d)"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-\d+)?")

# (file, figure): why it is not a measurement
EXEMPT = {
    ("README.md", "0.9"): "λ = 0.9, the sdpo preset's GRPO mix: a setting",
    ("README.md", "0.6"): "the paper's model size (0.6B), quoted",
    ("training.md", "0.9"): "λ = 0.9, a setting",
    ("evaluation.md", "0.9"): "λ = 0.9, a setting",
    ("environments.md", "0.0"): "a reward value in the contract, not a measurement",
    ("training.md", "1e-6"): "the tolerance a test asserts (tests/algorithms/engine)",
    ("training.md", "1e-2"): "the tolerance a test asserts",
    ("training.md", "2e-5"): "a learning rate: a setting",
    ("training.md", "1e-5"): "the tolerance a test asserts",
    ("training.md", "1e-4"): "the tolerance a test asserts",
    ("training.md", "1.2"): "YAML 1.2, a version",
    ("training.md", "1.1"): "YAML 1.1, a version",
    ("training.md", "5.20"): "transformers < 5.20, a version",
    ("training.md", "25%"): "a monitor's threshold: a setting",
    ("evaluation.md", "95%"): "the bootstrap interval's level: a setting",
    ("evaluation.md", "25%"): "the verdict rule's threshold: a setting",
    ("evaluation.md", "408/409"): "HTTP status codes",
}


def _paragraphs(path: Path):
    """Prose paragraphs as lists of (line number, text); fenced code is left out."""
    fence, para = False, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        if line.startswith("|"):  # each table row stands alone
            yield [(number, line)]
        elif line.strip():
            para.append((number, line))
        elif para:
            yield para
            para = []
    if para:
        yield para


def figures(line: str) -> list[str]:
    """The figures of one line of prose.

    >>> figures("GRPO **0.911 ± 0.033**, `torch==2.13.0`, 2.26x, 14/64, 40% and [a](x/1.5)")
    ['0.911', '0.033', '2.26x', '14/64', '40%']
    """
    line = re.sub(r"`[^`]*`", "", line)
    line = re.sub(r"\]\([^)]*\)", "]", line)
    return _FIGURE.findall(line)


def _stored() -> tuple[str, dict[int, set[float]]]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(RESULTS.glob("*.txt")))
    by_decimals: dict[int, set[float]] = {}
    for match in _NUMBER.findall(text):
        decimals = len(match.split(".")[1].split("e")[0]) if "." in match else 0
        value = float(match)
        for d in range(decimals + 1):
            by_decimals.setdefault(d, set()).add(round(value, d))
    return text, by_decimals


def backed(figure: str, text: str, by_decimals: dict[int, set[float]]) -> bool:
    """True when a stored output holds the figure (exactly, or rounded to its decimals)."""
    if figure in text:
        return True
    if "/" in figure or "e-" in figure:
        return False
    number = figure.rstrip("x%")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return round(float(number), decimals) in by_decimals.get(decimals, set())


def unbacked(docs: list[Path] = DOCS, root: Path = ROOT) -> list[str]:
    """'file:line: figure' for each figure that is neither backed, unverified nor exempt."""
    text, by_decimals = _stored()
    missing = []
    for path in docs:
        for para in _paragraphs(path):
            if any("unverified" in line.lower() for _, line in para):
                continue
            for number, line in para:
                for figure in figures(line):
                    if (path.name, figure) in EXEMPT or backed(figure, text, by_decimals):
                        continue
                    missing.append(f"{path.relative_to(root)}:{number}: {figure}")
    return missing


def test_every_stored_output_names_its_command_and_commit():
    outputs = sorted(RESULTS.glob("*.txt"))
    assert outputs
    for path in outputs:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and "commit" in first, f"{path.name}: {first}"


def test_every_figure_in_the_docs_has_a_stored_output():
    missing = unbacked()
    assert not missing, (
        "figures that no stored output in benchmarks/results/ holds (store the output of the "
        "command that prints them, say 'unverified' in the paragraph, or exempt a setting in "
        "tests/test_doc_figures.py):\n" + "\n".join(missing)
    )


def test_the_check_finds_an_unbacked_figure(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "Backed: 54.79 (benchmarks/results/remote_envs.txt) rounds to 54.8.\n\n"
        "Made up: 12.345x faster.\n\nUnverified: 13.579x.\n"
    )
    assert unbacked([doc], tmp_path) == ["x.md:3: 12.345x"]
