"""The domain: one module per capability, typed pydantic in and out, no MCP imports."""
