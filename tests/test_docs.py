"""The documentation site stays true to the code.

Every public name has an entry on an API page, every entry names something
that exists, the README says how to serve the docs, and the Python on the
guide pages runs. The strict site build itself is ``make docs``.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import typing

import pytest

import adamx

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_PAGES = sorted((DOCS / "api").glob("*.md"))
# Pages whose ```python blocks run, in order, in one namespace per page.
RUNNABLE_PAGES = [
    "index.md",
    "getting-started.md",
    "guides/from-optax.md",
    "guides/from-torch.md",
    "guides/adam-family.md",
    "guides/muon.md",
]

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

# A `::: path` line and the indented option lines under it.
DIRECTIVE = re.compile(r"^::: +(\S+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def api_entries() -> dict[str, list[str]]:
    """Each ``::: path`` directive of the API pages, and the pages it is on."""
    entries: dict[str, list[str]] = {}
    for page in API_PAGES:
        for path, _ in DIRECTIVE.findall(page.read_text()):
            entries.setdefault(path, []).append(page.name)
    return entries


def resolve(path: str) -> object:
    """The object a directive documents, looked up as Griffe does.

    A submodule wins over a package attribute of the same name, as in Griffe.
    """
    parts = path.split(".")
    assert parts[0] == "adamx", f"{path}: API entries document adamx"
    obj: object = adamx
    for i, part in enumerate(parts[1:], start=2):
        if inspect.ismodule(obj):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                continue
            except ImportError:
                pass
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ImportError(f"no {path}") from e
    return obj


def documented_objects() -> list[object]:
    """What the API pages document: each entry, and a module entry's members."""
    found = []
    for page in API_PAGES:
        for path, options in DIRECTIVE.findall(page.read_text()):
            obj = resolve(path)
            found.append(obj)
            if inspect.ismodule(obj) and not re.search(r"members:\s*false", options):
                names = getattr(obj, "__all__", [])
                found += [getattr(obj, name) for name in names]
    return found


def test_there_are_api_pages():
    assert len(API_PAGES) >= 5
    assert api_entries()


def test_every_public_name_has_an_api_entry():
    # Compared by identity: a name re-exported at the top level is documented
    # wherever its page puts it.
    documented = documented_objects()
    missing = [
        name
        for name in adamx.__all__
        if not any(getattr(adamx, name) is obj for obj in documented)
    ]
    assert not missing, (
        f"add a '::: adamx.<name>' entry to a page of docs/api/ for {missing}"
    )


def public_callables() -> list[tuple[str, object]]:
    """adamx's functions and classes, leaving out the NamedTuple states."""
    return [
        (name, obj)
        for name in adamx.__all__
        if (obj := getattr(adamx, name)) is not typing.Any  # the ArrayTree aliases
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and not hasattr(obj, "_fields")
    ]


def test_every_public_function_and_class_has_a_doctest_example():
    # pytest --doctest-modules runs them; this makes sure there is one to run.
    missing = [n for n, obj in public_callables() if ">>>" not in (obj.__doc__ or "")]
    assert not missing, f"no '>>>' example in the docstring of {missing}"


def test_every_transformation_and_schedule_states_its_math():
    def returns_update_rule(obj: object) -> bool:
        annotation = str(inspect.signature(obj).return_annotation)
        return "GradientTransformation" in annotation or "Schedule" in annotation

    # Marks a transformation and returns it as it is: no rule of its own.
    no_rule = {"elementwise"}
    missing = [
        name
        for name, obj in public_callables()
        if inspect.isfunction(obj)
        and name not in no_rule
        and returns_update_rule(obj)
        and ".. math::" not in (obj.__doc__ or "")
        and ":math:" not in (obj.__doc__ or "")
    ]
    assert not missing, f"no '.. math::' block in the docstring of {missing}"


def test_every_api_entry_names_something_that_exists():
    for path, pages in api_entries().items():
        try:
            resolve(path)
        except ImportError:
            pytest.fail(f"{pages}: '::: {path}' names nothing in adamx")


def test_no_public_name_is_documented_twice():
    # A name documented on two pages gets two anchors, and links go to either.
    twice = {p: pages for p, pages in api_entries().items() if len(pages) > 1}
    assert not twice, twice


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in API_PAGES:
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in the nav"


def test_readme_says_how_to_serve_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert "make docs-serve" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs-serve:", makefile, re.M)
    assert re.search(r"mkdocs build --strict", makefile)


def test_home_page_shows_the_readme_example():
    def example(text: str) -> str:
        return re.search(r"## Example\n\n.*?```python\n(.*?)```", text, re.S).group(1)

    readme = (ROOT / "README.md").read_text()
    home = (DOCS / "index.md").read_text()
    assert example(home) == example(readme)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_on_the_page_runs(page, tmp_path, monkeypatch):
    blocks = PYTHON_BLOCK.findall((DOCS / page).read_text())
    assert blocks, f"{page} has no python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{page}"}
    for i, code in enumerate(blocks):
        # torch is optional (see the Makefile); its comparisons stand alone.
        if re.search(r"^(import|from) torch", code, re.M) and not HAVE_TORCH:
            continue
        exec(compile(code, f"docs/{page} (block {i + 1})", "exec"), namespace)


# ----------------------------------------------------- the built site, offline


def _check_site_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_site", ROOT / "docs" / "check_site.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_check_finds_raw_tex_and_external_scripts():
    check = _check_site_module().check_page
    good = (
        '<script src="../javascripts/vendor/mathjax/tex-mml-chtml.js"></script>'
        '<p>A rule: <span class="arithmatex">\\(x^2\\)</span>.</p>'
        '<div class="arithmatex">\\[\\begin{aligned} a &= b \\end{aligned}\\]</div>'
        "<pre><code>$$ not math $$</code></pre>"
    )
    assert check(good) == []
    bad = (
        '<script src="https://cdn.example.org/mathjax.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/a.css">'
        "<ul><li><p>$$</p><p>y = x \\begin{cases} 1 \\end{cases}</p></li></ul>"
    )
    assert check(bad) == [
        "loads script https://cdn.example.org/mathjax.js from elsewhere",
        "loads stylesheet //fonts.example.org/a.css from elsewhere",
        "raw TeX '$$' outside the math",
        "raw TeX '\\\\begin{' outside the math",
    ]


def test_the_built_site_works_offline():
    # make docs builds the site (and runs this check) before the suite runs.
    site = ROOT / "site"
    if not (site / "index.html").is_file():
        pytest.skip("no built site: make docs builds one")
    assert _check_site_module().check_site(site) == []
    # The math renderer is served with the site, its fonts beside it.
    mathjax = site / "javascripts" / "vendor" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


@pytest.mark.parametrize("page", ["performance.md", "memory.md"])
def test_the_results_pages_fit_a_screen_or_two(page):
    # The table, the plot, what it means and how to reproduce it; method and
    # history live in the benchmark notes.
    text = (DOCS / page).read_text()
    assert len(text.split()) < 800, len(text.split())
    assert "benchmark-notes.md" in text
    assert "## Reproduce" in text


def test_no_table_of_the_docs_is_wider_than_six_columns():
    # Wider ones are clipped in the page's column.
    for page in [*DOCS.rglob("*.md"), ROOT / "examples" / "cifar10" / "README.md"]:
        if page.name == "benchmark-notes.md":
            continue  # the full tables, kept for reference
        for line in page.read_text().splitlines():
            if line.startswith("|---"):
                assert line.count("|") - 1 <= 6, f"{page.name}: {line}"
