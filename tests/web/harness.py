"""Serve the platform with the dashboard mounted, for `STOCKADE_WEB_HARNESS=1` runs of tests/web.

This is `stockade serve` (the same `Platform`, settings, database and services) plus the one line the
lead adds to `create_control_app`. It exists only so the dashboard tests can run before that line is
merged; when `stockade.orchestrator.runtime` is still missing, a stand-in orchestrator refuses every
deploy (so the deploy test fails, as it must, until the real one lands).
Writes the admin token to `<data_dir>/harness-admin-token` once it is serving.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from stockade.errors import EngineError


def _stub_runtime() -> None:
    if importlib.util.find_spec("stockade.orchestrator.runtime") is not None:
        return

    class Orchestrator:
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            pass

        def deploy(self, *_args: object, **_kwargs: object) -> object:
            raise EngineError("the orchestrator (stockade.orchestrator.runtime) is not built yet")

        def remove(self, _slug: str) -> None:
            return None

        def instances(self) -> list[object]:
            return []

        def status(self, _slug: str) -> object:
            return types.SimpleNamespace(running=False, oom_killed=False, exit_code=None, state="absent", error=None)

        def ensure_image(self, *_args: object, **_kwargs: object) -> object:
            raise EngineError("the orchestrator (stockade.orchestrator.runtime) is not built yet")

    module = types.ModuleType("stockade.orchestrator.runtime")
    module.Orchestrator = Orchestrator  # type: ignore[attr-defined]
    sys.modules["stockade.orchestrator.runtime"] = module


def main() -> None:
    _stub_runtime()
    import anyio

    from stockade.config import load_settings
    from stockade.control import platform as platform_module
    from stockade.web import create_dashboard_router

    original = platform_module.create_control_app

    def create_control_app(database, deployments, gateway):  # type: ignore[no-untyped-def]
        app = original(database, deployments, gateway)
        if not any(getattr(r, "path", "").startswith("/ui") for r in app.routes):
            app.include_router(create_dashboard_router(database, deployments, gateway), prefix="/ui")
        return app

    platform_module.create_control_app = create_control_app
    settings = load_settings()
    platform = platform_module.Platform(settings)
    token_file = settings.data_dir / "harness-admin-token"

    async def on_started() -> None:
        minted = platform_module.mint_admin_token(platform.database, name="tests")
        token_file.write_text(minted.secret)
        token_file.chmod(0o600)

    try:
        anyio.run(lambda: platform.serve(on_started=on_started))
    finally:
        platform.close()


if __name__ == "__main__":
    main()
