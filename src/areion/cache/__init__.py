"""Cache tiers: exact responses (L1), semantic (L2), tool results and plans (L3)."""

__all__: list[str] = []
