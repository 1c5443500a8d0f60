"""Running MCP servers in hardened containers on the local engine (Docker, or Podman's Docker API).

    engine.py      connect_engine / engine_summary: find, or install and start, the engine
    packages.py    host-side downloads into settings.cache_dir (debootstrap rootfs, wheels, npm, node)
    dockerfile.py  the server image's Dockerfile (distroless final stage)
    images.py      ImageBuilder: offline, content-hashed, cached builds (never pulls)
    spec.py        container_spec: the hardened container as pure data
    firewall.py    host INPUT rules keeping each server's network away from the host
    egress.py      network profiles (none/egress/open) and the per-server squid egress proxy
    subnets.py     a /28 per server network from settings.server_network_pool
    runtime.py     Orchestrator: deploy / remove / instances / status
    k8s/           rendering the same servers for Kubernetes (separate)

Submodules are imported explicitly (`from stockade.orchestrator.runtime import Orchestrator`):
the bridge inside server images imports `stockade` without the docker SDK.
"""
