"""Sphinx configuration: the API reference from the docstrings, and the executed notebooks.

Build (from the repository root, with the ``docs`` extra installed)::

    .venv/bin/sphinx-build -W --keep-going -b html docs/source docs/_build/html

``-W`` turns every warning into an error and ``nitpicky`` below makes every unresolved
cross-reference a warning, so a broken ``:func:`` reference or a malformed docstring fails
the build. The notebooks are rendered with their committed outputs (never executed here):
they are copied from ``notebooks/`` into ``docs/source/notebooks/`` (generated, not committed)
when the build starts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, whether or not it is installed

import jsoftmax  # noqa: E402

project = "jsoftmax"
author = "the jsoftmax authors"
copyright = "the jsoftmax authors"
release = version = jsoftmax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",  # typeset in the browser by MathJax, loaded from its CDN (offline:
    # point mathjax_path at a local copy, e.g. -D mathjax_path=file:///.../tex-mml-chtml.js)
    "myst_nb",
]

# --- the notebooks -------------------------------------------------------------------------
# Sphinx reads only files under this folder: copy the committed notebooks in, afresh each build.
_NB_SRC = ROOT / "notebooks"
_NB_DST = HERE / "notebooks"
shutil.rmtree(_NB_DST, ignore_errors=True)
_NB_DST.mkdir()
for _nb in sorted(_NB_SRC.glob("[0-9][0-9]_*.ipynb")):
    shutil.copy2(_nb, _NB_DST / _nb.name)

nb_execution_mode = "off"  # render the committed outputs; tests/test_notebooks.py runs them
nb_merge_streams = True  # one box per cell for its printed output, however it was flushed
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# --- the API reference ---------------------------------------------------------------------
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_custom_sections = [("See also", "see_also")]

# Every cross-reference must resolve. Names from other projects (JAX, NumPy, optax, the
# standard library) are not linked (no intersphinx: the build works offline), so they are
# exempt; a reference to a jsoftmax name that does not exist still fails.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(jax|jaxlib|jnp|np|numpy|optax|lax|typing|collections|os|pathlib|argparse)(\..*)?",
    ),
    (r"py:.*", r"(ArrayLike|Array|NamedSharding|Mesh|PartitionSpec|PRNGKeyArray)"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterator|Iterable|NamedTuple|PathLike)"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|None|bytes|object|type)"),
]


# Docstring problems in the library, each reported for a fix there; until then these keep the
# build (with -W) green. Remove an entry once its docstring is fixed: the build then checks it.
def _skip_reexported(app, what, name, obj, skip, options):
    """Leave out of a ``jsoftmax.train.<module>`` page the names that ``jsoftmax.train`` documents.

    The package page documents what ``jsoftmax.train`` re-exports (its ``__all__``); each
    module's section documents only the rest of its names, so nothing is documented twice.
    """
    import jsoftmax.train

    module = getattr(obj, "__module__", None) or ""
    if what == "module" and name in jsoftmax.train.__all__ and module.startswith("jsoftmax.train."):
        current = app.env.temp_data.get("autodoc:module") or app.env.ref_context.get("py:module")
        if current != "jsoftmax.train":
            return True
    return None


def _resolve_sibling(app, env, node, contnode):
    """Resolve an unqualified name used in one ``jsoftmax`` module but documented in a sibling.

    ``jsoftmax.train`` re-exports its modules' names, so a docstring in
    ``jsoftmax.train.config`` may say :func:`get_config` (documented as
    ``jsoftmax.train.get_config``), and a function documented at the package level may name a
    module-only helper (``he_init``). Python's own lookup would find both; Sphinx's searches only
    the current module. This tries the unique documented ``jsoftmax`` object of that name.
    """
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if "." in target or not (node.get("py:module") or "").startswith("jsoftmax"):
        return None
    py = env.domains["py"]
    matches = [
        (name, obj)
        for name, obj in py.objects.items()
        if name.startswith("jsoftmax.") and name.rsplit(".", 1)[-1] == target and not obj.aliased
    ]
    if len(matches) != 1:
        return None
    name, obj = matches[0]
    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)


def _array_like_in_signatures(app, what, name, obj, options, signature, return_annotation):
    """Signatures say ``ArrayLike``, not the union of array and scalar types it stands for.

    (``autodoc_type_aliases`` would do it, but Sphinx renders ``ArrayLike | None`` through it as
    ``TypeAliasForwardRef(...)``.)
    """
    from jax.typing import ArrayLike
    from sphinx.util.typing import stringify_annotation

    union = stringify_annotation(ArrayLike, "smart")
    if signature:
        signature = signature.replace(union, "~jax.typing.ArrayLike")
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _array_like_in_signatures)
    app.connect("autodoc-skip-member", _skip_reexported)
    app.connect("missing-reference", _resolve_sibling)


# --- HTML ----------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"jsoftmax {release}"
html_static_path: list[str] = []
html_theme_options = {"page_width": "1200px", "sidebar_width": "240px"}  # 100-column code
