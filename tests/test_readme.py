"""The docs stay true to the code: the README's commands, docs/params.md's params,
docs/results.md's schema section, and every local link between them."""

from __future__ import annotations

import re

import pytest
from caio_testing import REPO, doc_commands

from caio_operators.results.schema import schema_markdown
from caio_operators.spec import param_schema, params_markdown

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def test_schema_section_matches_the_schema_module():
    text = (DOCS / "results.md").read_text()
    section = re.search(r"<!-- schema:start -->\n(.*)\n<!-- schema:end -->", text, re.S)
    assert section, "docs/results.md lost its schema markers"
    assert section.group(1).strip() == schema_markdown().strip(), (
        "docs/results.md schema is stale: paste "
        "caio_operators.results.schema.schema_markdown()")


def test_params_tables_match_the_declarations(tmp_path):
    text = (DOCS / "params.md").read_text()
    section = re.search(r"<!-- params:start -->\n(.*)\n<!-- params:end -->", text, re.S)
    assert section, "docs/params.md lost its params markers"
    assert section.group(1).strip() == params_markdown().strip(), (
        "docs/params.md params tables are stale: paste caio_operators.spec.params_markdown()")
    for name in param_schema(tmp_path, tmp_path):
        assert f"| `{name}` |" in section.group(1)


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_backfill_block_extracts_as_the_scheduler_tier_runs_it():
    """tests/scheduler runs docs/scheduling.md's backfill block as written: it stays three
    airflow commands, each on its own (continued) line, with no shell syntax in them."""
    commands = doc_commands("scheduling.md", "backfill")
    assert [argv[:3] for argv in commands] == [["airflow", "backfill", "create"],
                                               ["airflow", "dags", "unpause"],
                                               ["airflow", "backfill", "create"]]
    assert all("\\" not in arg and not arg.startswith(("|", ">", "&")) for argv in commands
               for arg in argv)


MARKDOWN = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "bench" / "README.md",
            *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_local_links_resolve(page):
    """A moved section leaves no dead link behind: every relative link names a file that
    exists, and a #fragment names a heading of that file."""
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target} names no file"
        if fragment and file.suffix == ".md":
            assert fragment in anchors(file.read_text()), (
                f"{page.name}: link to {target}: no such heading in {file.name}")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}
