"""The toy search's models and objective module (search_toys.py), built once for the search tests."""

import sys

import pytest

from search_toys import build_family


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    f = build_family(root)
    sys.path.insert(0, str(root))
    yield f
    sys.path.remove(str(root))
