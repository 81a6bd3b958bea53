"""A Python client for the Backstream HTTP API, for notebooks and scripts (and the CLI).

from orchestrator.client import Client
run = Client("http://127.0.0.1:8000").submit("sma_cross", "AAPL", params={"fast": 10, "slow": 20})
task = run.wait()
result = run.result()
"""

from orchestrator.client.api import AsyncClient, AsyncRun, Client, ClientError, Refused, Result, Run

__all__ = ["AsyncClient", "AsyncRun", "Client", "ClientError", "Refused", "Result", "Run"]
