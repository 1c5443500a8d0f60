from __future__ import annotations

import pytest

from tests.k8s.support import find_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return find_helm(tmp_path_factory.mktemp("helm"))
