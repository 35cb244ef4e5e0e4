"""Build the C accelerator of the strict CBOR codec (issue 10 item 6).

Everything else about the package is in pyproject.toml; this file only declares the
extension, because setuptools' ``ext-modules`` table in pyproject.toml is still experimental.
The extension is optional: where it cannot be compiled (no C compiler, no Python headers)
the install goes on and ``atp_proto.frames._cbor`` runs its pure-Python path, which gives the
same answers (``ATP_PURE_CBOR=1`` selects that path too; ``atp bench codec`` says which ran).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class _BuildExt(build_ext):
    """``build_ext`` that first removes the module an earlier build left in the source tree
    (``pip install -e .`` puts it beside ``_ccbor.c``): else, once an edit of ``_ccbor.c``
    fails to compile (the build is optional, so the install still succeeds), the stale
    module of the old source would go on being imported, and tested, as if it were the new
    one. With it removed the pure path runs, and tests/frames/test_ccbor_build.py says so
    wherever a compiler is."""

    def run(self) -> None:
        # only a build into the tree replaces that module (``pip wheel .`` must leave it be)
        if self.inplace or getattr(self, "editable_mode", False):
            for ext in self.extensions:
                Path(self.get_ext_filename(ext.name)).unlink(missing_ok=True)  # cwd: the tree
        super().run()


setup(
    ext_modules=[
        Extension(
            "atp_proto.frames._ccbor",
            sources=["atp_proto/frames/_ccbor.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": _BuildExt},
)
