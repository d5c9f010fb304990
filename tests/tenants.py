"""Tenants of the test session's app (keys in clear here; the config holds only their sha256)."""

from __future__ import annotations

from federation.tenants import hash_key

ADMIN_KEY = "k-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEYS = {
    "admin": ADMIN_KEY,
    "brand_x": "k-brand-x",
    "brand_y": "k-brand-y",
    "agency": "k-agency",
    "limited": "k-limited",
    "reviewer": "k-reviewer",
}

# federation adapters: id -> (kind, owner, visibility); rank 4 each so a 4-layer stack fits max_lora_rank 16
FED_ADAPTERS = {
    "rm": ("industry", "rmn", "public"),
    "acme": ("retailer", "acme", "public"),
    "brand_x": ("manufacturer", "brand_x", "private"),
    "brand_y": ("manufacturer", "brand_y", "private"),
    "task_planning": ("task", "rmn", "public"),
    "task_creative": ("task", "rmn", "public"),
}


def auth(tenant: str) -> dict[str, str]:
    """The Authorization header of a test tenant."""
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def tenants_config() -> list[dict[str, object]]:
    """The ``federation.tenants`` list of the session app."""
    return [
        {
            "id": "admin",
            "role": "admin",
            "api_key_sha256": hash_key(KEYS["admin"]),
            "rate_limit_per_minute": 100000,
        },
        {
            "id": "brand_x",
            "role": "manufacturer",
            "api_key_sha256": hash_key(KEYS["brand_x"]),
            "retailer": "acme",
            "manufacturer": "brand_x",
        },
        {
            "id": "brand_y",
            "role": "manufacturer",
            "api_key_sha256": hash_key(KEYS["brand_y"]),
            "retailer": "acme",
            "manufacturer": "brand_y",
        },
        {"id": "agency", "role": "agency", "api_key_sha256": hash_key(KEYS["agency"]), "grants": ["brand_x"]},
        {"id": "reviewer", "role": "reviewer", "api_key_sha256": hash_key(KEYS["reviewer"])},
        {
            "id": "limited",
            "role": "agency",
            "api_key_sha256": hash_key(KEYS["limited"]),
            "rate_limit_per_minute": 2,
        },
    ]
