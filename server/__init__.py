"""Adapters only: the MCP server and the CLI, thin views of tunestep.tools."""
