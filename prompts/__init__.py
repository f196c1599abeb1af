"""MCP prompt templates, one Markdown file each."""
