"""The language-neutral ATP conformance material (ARCHITECTURE §5.3).

So far: ``conformance/vectors/``, data files any implementation can read (JSON), with a
small Python loader. Installed beside ``atp_proto`` as a second top-level package, with the
vectors as package data, so ``atp frames seeds`` works from a plain ``pip install``.
"""
