"""The embedded ServiceNow instance ("the sandbox"): a faithful emulator of the parts of ServiceNow
importer talks to, served over real HTTP. It shares no code with the client. See docs/sandbox.md."""

from .data import SandboxDataError
from .server import SandboxServer

__all__ = ["SandboxDataError", "SandboxServer"]
