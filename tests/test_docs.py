"""The repository stands on its own: README, the results notes and the code mention no file that it does not have."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = "py|md|sh|txt|png|json|csv|pt|pt2|mp4|toml|cfg|yml|yaml"
FILE_NAME = re.compile(rf"(?<![\w/.<{{-])((?:\.\./|[\w-]+/)*[\w.-]*\w\.(?:{EXTENSIONS}))\b")
# what runs write (relative to where they run), placeholders and examples of the user's own files
GENERATED = ("runs/", "logs/", "results/", "videos/", "/tmp/")
EXAMPLES = {"OLD_SCRIPT.py", "old.py", "STEM.pt", "STEM_multimodality.png", "multimodality.png", "_multimodality.png",
            "sampler.pt2", "eval.json",  # --eval-only's output
            "all_tasks.png", "runs.json",  # report.py's figure of every task, its record of the runs it read
            "dacerv2_utils.py"}  # the plumbing module of revisions up to fe5a4ab, for --baseline runs of them
PLACEHOLDER = re.compile(r"(^|/)[A-Z][A-Z_]+/")  # a folder that stands for the user's: OUT/x.md, REPO_ROOT/x.py


def documents():
    """README, every markdown file under benchmark/ and docs/, every Python and shell file of the project."""
    patterns = ["README.md", "benchmark/**/*.md", "docs/**/*.md", "*.py", "benchmark/*.py", "benchmark/*.sh", ".ci/*"]
    return sorted({path for pattern in patterns for path in REPO.glob(pattern)})


def missing_references(path):
    """File names mentioned in path that exist neither beside it nor from the repository root."""
    missing = []
    for name in FILE_NAME.findall(path.read_text()):
        if name.startswith(GENERATED) or name in EXAMPLES or PLACEHOLDER.search(name) or name.startswith("args."):
            continue
        if not ((path.parent / name).exists() or (REPO / name).exists() or list(REPO.glob(f"**/{name}"))):
            missing.append(name)
    return missing


def test_every_mentioned_file_exists():
    problems = {str(path.relative_to(REPO)): missing_references(path) for path in documents()}
    assert {path: names for path, names in problems.items() if names} == {}


def test_the_check_finds_a_missing_file(tmp_path):
    note = tmp_path / "README.md"
    note.write_text("The spec is ALGORITHM.md; see `dacerv2_continuous.py` and benchmark/results/nowhere/x.png.\n")
    assert missing_references(note) == ["ALGORITHM.md", "benchmark/results/nowhere/x.png"]
