"""Adapters only: the MCP server and the CLI, thin views of tunestep.tools.

app.py is the MCP server (its tool table; mcp_tools.py: how a domain function becomes a
tool, its annotations and its errors); cli.py the `tunestep` command (its docstring says which
cli_*.py module a command lives in); render.py prints a result in a terminal (its
docstring says which *_screen.py module draws which result).
"""
