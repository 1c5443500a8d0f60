"""The generated Dockerfile (pure text): offline install, layer order, distroless final stage."""

from __future__ import annotations

from stockade.orchestrator.dockerfile import ENTRYPOINT, RUNTIME_USER, server_dockerfile


def lines_of(**kwargs: object) -> list[str]:
    defaults: dict[str, object] = {"base_image": "stockade/base:bookworm-x", "pip_wheel": "pip-26.3-py3-none-any.whl",
                                   "ecosystem": "pypi", "requirement": "mcp-server-time==2026.10.19",
                                   "package": "mcp-server-time", "version": "2026.10.19"}
    defaults.update(kwargs)
    return server_dockerfile(**defaults).splitlines()  # type: ignore[arg-type]


def test_installs_are_offline_and_from_the_context() -> None:
    for ecosystem, requirement in (("pypi", "mcp-server-time==2026.10.19"), ("npm", None)):
        text = "\n".join(lines_of(ecosystem=ecosystem, requirement=requirement))
        for line in text.splitlines():
            if " install " in line and "pip" in line:
                assert "--no-index" in line
        for forbidden in ("curl", "wget", "apt-get", "npm install", "pip download", "ADD http"):
            assert forbidden not in text


def test_stockade_code_is_the_last_layer_of_the_build_stage() -> None:
    lines = lines_of()
    build_stage = lines[: next(i for i, line in enumerate(lines) if line.startswith("FROM scratch"))]
    copies = [line for line in build_stage if line.startswith(("COPY", "RUN"))]
    assert copies[-2].startswith("COPY stockade/")
    assert "--no-deps" in copies[-1]
    # heavier, slower-changing layers come first
    order = [next(i for i, line in enumerate(lines) if line.startswith(prefix))
             for prefix in ("COPY wheels-bridge/", "COPY wheels-server/", "RUN /build/bin/collect-runtime", "COPY stockade/")]
    assert order == sorted(order)


def test_npm_images_carry_node_and_the_npm_tree() -> None:
    lines = lines_of(ecosystem="npm", requirement=None)
    assert "COPY node /opt/stockade/node/bin/node" in lines
    assert "COPY npm/ /opt/stockade/server/" in lines
    assert not any("wheels-server" in line for line in lines)


def test_distroless_final_stage() -> None:
    lines = lines_of()
    final = lines[lines.index("FROM scratch"):]
    assert final[1] == "COPY --from=build /rootfs/ /"
    assert f"USER {RUNTIME_USER}" in final and RUNTIME_USER == "65534:65534"
    assert any(line.startswith("ENTRYPOINT") and '"stockade.bridge"' in line for line in final)
    assert ENTRYPOINT[1:] == ["-m", "stockade.bridge"]
    assert not any(line.startswith("RUN ") and not line.startswith("RUN [") for line in final)  # no shell there


def test_plain_flavour_keeps_the_build_stage() -> None:
    lines = lines_of(distroless=False)
    assert "FROM scratch" not in lines
    assert f"USER {RUNTIME_USER}" in lines
