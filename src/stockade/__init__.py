"""Stockade: MCP servers as governed, isolated infrastructure.

This module stays import-light on purpose: the bridge runs inside server containers with only
its own few dependencies installed, and `import stockade.bridge` must not pull in the rest.
"""

__version__ = "0.1.0"
