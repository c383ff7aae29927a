"""The billing agent of the crash tests, as `areion serve` replicas load it by path
(`tests.replica_agent:agent`); its bank is the SQLite file named by AREION_TEST_BANK."""

from __future__ import annotations

import os

from tests.crash_worker import build_agent

agent = build_agent(os.environ["AREION_TEST_BANK"])
