"""The bridge: one stdio MCP server, served over MCP Streamable HTTP (both protocol eras) and REST.

It runs inside each server container (`python3 -m stockade.bridge ... -- COMMAND`). Hand-written
on purpose rather than built on the official SDK's server and client: those validate every message
into models and serialise them back, which loses unknown fields and costs time on every hop. A
bridge must be transparent (what the server says reaches the client, fields it does not know
included) and fast, so messages stay dicts and only routing keys are read or rewritten.

Modules, one job each: `options` (command line, bootstrap), `framing` (stdout lines), `process`
(the subprocess), `multiplexer` (id remapping and routing), `backend` (handshake, supervision),
`sessions` / `hub` (clients and shared state), `streamable` (MCP over HTTP), `rest`, `http` (app).
Imports: the standard library, anyio, starlette, uvicorn and `stockade.errors` only.
"""
