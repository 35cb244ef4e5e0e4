"""Build the C accelerator of the strict CBOR codec (issue 10 item 6).

Everything else about the package is in pyproject.toml; this file only declares the
extension, because setuptools' ``ext-modules`` table in pyproject.toml is still experimental.
The extension is optional: where it cannot be compiled (no C compiler, no Python headers)
the install goes on and ``atp_proto.frames._cbor`` runs its pure-Python path, which gives the
same answers (``ATP_PURE_CBOR=1`` selects that path too; ``atp bench codec`` says which ran).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "atp_proto.frames._ccbor",
            sources=["atp_proto/frames/_ccbor.c"],
            optional=True,
        )
    ]
)
