"""The README stays true to the code: its schema section, its params, its commands."""

from __future__ import annotations

import re

from caio_testing import REPO

from caio_operators.results.schema import schema_markdown
from caio_operators.spec import param_schema

README = (REPO / "README.md").read_text()


def test_schema_section_matches_the_schema_module():
    section = re.search(r"<!-- schema:start -->\n(.*)\n<!-- schema:end -->", README, re.S)
    assert section, "README lost its schema markers"
    assert section.group(1).strip() == schema_markdown().strip(), (
        "README schema is stale: paste caio_operators.results.schema.schema_markdown()")


def test_every_param_is_documented(tmp_path):
    for name in param_schema(tmp_path, tmp_path):
        assert f"`{name}`" in README, f"param {name} is missing from the README"


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
