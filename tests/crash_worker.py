"""A worker process for the crash test: runs (or resumes) one agent run, then exits.

python -m tests.crash_worker --store PATH --bank PATH --upstream URL --run-id ID
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time

from areion import Agent, Runtime, ToolContext, tool
from areion.config import parse_config


def bank(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT, at REAL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, account TEXT, amount REAL)"
    )
    return db


def build_agent(bank_path: str) -> Agent:
    @tool
    async def lookup(key: str) -> str:
        """Look up a value."""
        await asyncio.sleep(0.15)
        return f"value-{key}"

    @tool(idempotent=False)
    def charge(account: str, amount: float, context: ToolContext) -> str:
        """Charge an account: a side effect, deduplicated by idempotency key like a payment API."""
        db = bank(bank_path)
        db.execute("INSERT INTO attempts VALUES (?, ?)", (context.idempotency_key, time.time()))
        time.sleep(0.1)
        db.execute(
            "INSERT OR IGNORE INTO charges VALUES (?, ?, ?)",
            (context.idempotency_key, account, amount),
        )
        db.close()
        return f"charged {amount} to {account}"

    return Agent(name="billing", model="fast", tools=[lookup, charge], max_steps=20)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()
    bank(args.bank).close()
    config = parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "m",
                    "base_url": args.upstream + "/v1",
                    "price": {"input": 1, "output": 2},
                }
            ],
            "store": f"sqlite:///{args.store}",
        }
    )
    async with Runtime(config) as rt:
        result = await rt.run(build_agent(args.bank), "bill the customers", run_id=args.run_id)
        print(result.status, result.steps, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
