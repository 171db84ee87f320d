"""The faces of the server beside its APIs: the web dashboard (`/ui`) and the MCP server (`/mcp`).

Both are clients of the same HTTP API and keys as any other: they add views, not powers.
"""

from bitinglip.interfaces.dashboard import UI_PATH, DashboardPlugin
from bitinglip.interfaces.mcp import MCP_PATH, McpPlugin
from bitinglip.interfaces.requests import AccessLine, RequestLog

__all__ = ["MCP_PATH", "UI_PATH", "AccessLine", "DashboardPlugin", "McpPlugin", "RequestLog"]
