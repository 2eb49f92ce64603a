"""One module per third-party library whose private API driftloop has to use.

Each module names the private names it touches, why, and the version range pinned in
pyproject.toml; tests/unit/test_adapters.py holds one contract test per module, so a library upgrade
that moves a private name breaks one named test instead of the loop. The rest of the project
imports these names only from here.
"""
