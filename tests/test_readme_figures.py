"""README.md's benchmark table is generated from the committed result file (scripts/readme_figures.py): a hand
edit of the table, or a result file changed without regenerating it, fails here."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_figures", REPO / "scripts" / "readme_figures.py")
readme_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_figures)


def test_readme_table_is_what_the_committed_results_give():
    readme = (REPO / "README.md").read_text()
    assert readme_figures.generate(readme, readme_figures.DEFAULT_RESULTS) == readme, (
        "README.md's benchmark table is stale or hand-edited: run `python scripts/readme_figures.py`")


def test_every_figure_in_the_table_comes_from_the_result_file(tmp_path):
    results = json.loads(readme_figures.DEFAULT_RESULTS.read_text())
    results["codec"]["ours_ms_mean"] = 987.6  # a different measurement must show in the table
    changed = tmp_path / "results.json"
    changed.write_text(json.dumps(results))
    readme = (REPO / "README.md").read_text()
    assert "| 988 ms/frame mean" in readme_figures.generate(readme, changed).split("node message path", 1)[1]


def test_only_the_region_between_the_markers_is_replaced():
    text = f"# Title\nbefore\n{readme_figures.START}\nold table\n{readme_figures.END}\nafter | x |\n"
    assert readme_figures.replace_region(text, "new") == (
        f"# Title\nbefore\n{readme_figures.START}\nnew\n{readme_figures.END}\nafter | x |\n")


@pytest.mark.parametrize("text", ["no markers", f"{readme_figures.START} a {readme_figures.START} {readme_figures.END}",
                                  f"{readme_figures.END} x {readme_figures.START}"])
def test_missing_duplicated_or_reversed_markers_are_refused(text):
    with pytest.raises(ValueError):
        readme_figures.replace_region(text, "new")


def test_check_mode_reports_a_stale_table_and_changes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    stale = f"x\n{readme_figures.START}\n| what | figure |\n| hand-typed | 1 ms |\n{readme_figures.END}\n"
    readme.write_text(stale)
    assert readme_figures.main(["--readme", str(readme), "--check"]) == 1
    assert readme.read_text() == stale
    assert readme_figures.main(["--readme", str(readme)]) == 0
    assert readme_figures.main(["--readme", str(readme), "--check"]) == 0
