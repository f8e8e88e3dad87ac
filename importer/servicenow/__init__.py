"""The ServiceNow instance adapter: settings, auth, the retry policy, one response classifier,
and ``InstanceClient`` for the Import Set, Table and Aggregate APIs."""

from .client import ImportSetRef, InstanceClient
from .settings import ClientSettings

__all__ = ["ClientSettings", "ImportSetRef", "InstanceClient"]
